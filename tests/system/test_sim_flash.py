"""``mpota flash`` against a simulated board: ``mpota sim bootloader`` holds the board
in its ROM bootloader on a pty (the mock bootloader in front of the board's own flash
file), the real ``mpota flash`` writes a full image and later an app-only image, and
the board boots what was written and updates over the air with the real agent."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import Fleet
from helpers import tool
from mpota_host import board as boards
from mpota_host.firmware import build_image, write_image
from mpota_host.sim.harness import SimBoard
from test_agent import WIFI, otadata_states, story

BOARD = "esp32-generic-4mb"


def full_image(app: bytes) -> bytes:
    """MicroPython's full image of an OTA build: bootloader at 0x1000, table, app in ota_0."""
    layout = boards.require(BOARD)
    bootloader = build_image("bootloader", size=8192)
    image = bytearray(b"\xff" * (0x10000 - 0x1000 + len(app)))
    image[: len(bootloader)] = bootloader
    table = layout.table_binary()
    image[0x7000 : 0x7000 + len(table)] = table
    image[0xF000:] = app
    return bytes(image)


class Bootloader:
    """``mpota sim bootloader --once`` as a technician runs it, in a subprocess."""

    def __init__(self, flash: Path) -> None:
        self.proc = subprocess.Popen(
            [tool("mpota"), "sim", "bootloader", "--flash", str(flash), "--once",
             "--timeout", "300"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # printed once the pty is open
        assert "in its ROM bootloader on /dev/" in first, first + self.proc.stderr.read()
        self.port = first.split(" on ", 1)[1].split(":", 1)[0]

    def finish(self) -> str:
        out, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, out + err
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def bootloaders() -> Iterator[list[Bootloader]]:
    started: list[Bootloader] = []
    yield started
    for loader in started:
        loader.kill()


def flash(port: str, firmware: Path) -> str:
    proc = subprocess.run(
        [tool("mpota"), "flash", "--port", port, "--board", BOARD, str(firmware)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "\x1b[" not in proc.stdout and "━" not in proc.stdout  # no bar in a pipe
    return proc.stdout


def test_flash_boot_and_update_a_simulated_board(
    fleet: Fleet, bootloaders: list[Bootloader]
) -> None:
    board: SimBoard = fleet.device(config=WIFI)  # v1.0.0 and the agent
    v11 = fleet.root / "v1.1.0.bin"
    write_image(v11, "1.1.0", "healthy", 64 * 1024)
    full = fleet.root / "ESP32_GENERIC-OTA.bin"
    full.write_bytes(full_image(v11.read_bytes()))

    # a full image, as a technician flashes MicroPython onto a new board
    loader = Bootloader(board.flash)
    bootloaders.append(loader)
    out = flash(loader.port, full)
    assert f"flashed {BOARD} on {loader.port}" in out and "ota_0: app 1.1.0" in out
    assert "is a pseudo-terminal" in out  # no DTR/RTS: said, not a warning per reset
    done = loader.finish()
    assert "flashed: 0x001000+" in done and "0x00d000+8192" in done
    flashed = board.flash.read_bytes()
    assert flashed[0x1000:0x3000] == full.read_bytes()[:0x2000]  # the bootloader
    assert flashed[0x8000:0x8C00] == boards.require(BOARD).table_binary()
    assert flashed[0x10000 : 0x10000 + 64 * 1024] == v11.read_bytes()
    assert flashed[0xD000:0xF000] == b"\xff" * 0x2000  # otadata erased

    records = board.boot(max_boots=1)
    assert story(records) == [("ota_0", "1.1.0", "repl")], records[-1].output

    # the agent on it updates over HTTPS as on any board
    fleet.publish("2.0.0", 2)
    records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.1.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[-1].output
    assert otadata_states(board) == ["VALID", "VALID"]

    # an app-only image: into ota_0, otadata erased, so the board boots ota_0 again
    v3 = fleet.root / "v3.app-bin"
    write_image(v3, "3.0.0", "healthy", 64 * 1024)
    loader = Bootloader(board.flash)
    bootloaders.append(loader)
    out = flash(loader.port, v3)
    assert "ota_0: app 3.0.0" in out and "bootloader already on the board" in out
    assert "0x008000+3072" in loader.finish()
    assert board.flash.read_bytes()[0x10000 : 0x10000 + 64 * 1024] == v3.read_bytes()
    assert board.status()["boot_slot"] == "ota_0"
    record = board.boot(max_boots=1)[0]
    assert (record.slot, record.version) == ("ota_0", "3.0.0"), record.output


def test_flash_refuses_a_board_whose_flash_is_too_small_for_the_firmware(
    tmp_path: Path, bootloaders: list[Bootloader]
) -> None:
    """The simulated bootloader reports the board's real flash size (here 4 MB)."""
    app = tmp_path / "fw.bin"
    write_image(app, "1.0.0", "healthy", 64 * 1024)
    board = SimBoard.create(BOARD, app, tmp_path / "b.flash")
    loader = Bootloader(board.flash)
    bootloaders.append(loader)
    layout8 = boards.require("esp32-generic-8mb")
    image = bytearray(full_image(app.read_bytes()))
    image[0x7000 : 0x7000 + len(layout8.table_binary())] = layout8.table_binary()
    big = tmp_path / "fw8.bin"
    big.write_bytes(bytes(image))
    proc = subprocess.run(
        [tool("mpota"), "flash", "--port", loader.port, "--board", "esp32-generic-8mb",
         str(big)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "has 4MB of flash, but board esp32-generic-8mb needs 8MB" in proc.stderr


def test_an_8mb_board_reports_8mb(tmp_path: Path, bootloaders: list[Bootloader]) -> None:
    app = tmp_path / "fw.bin"
    write_image(app, "1.0.0", "healthy", 64 * 1024)
    board = SimBoard.create("esp32-generic-8mb", app, tmp_path / "b8.flash")
    loader = Bootloader(board.flash)
    bootloaders.append(loader)
    proc = subprocess.run(
        [tool("mpota"), "flash", "--port", loader.port, "--board", "esp32-generic-8mb",
         str(app)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8MB flash" in proc.stdout
    loader.finish()


def test_a_board_runs_or_waits_in_its_bootloader_never_both(
    tmp_path: Path, bootloaders: list[Bootloader]
) -> None:
    from mpota_host.errors import SimulatorError
    from mpota_host.sim.serial import SerialBoard

    app = tmp_path / "fw.bin"
    write_image(app, "1.0.0", "healthy", 64 * 1024)
    board = SimBoard.create(BOARD, app, tmp_path / "b.flash")
    loader = Bootloader(board.flash)
    bootloaders.append(loader)
    with pytest.raises(SimulatorError, match=r"in use \(mpota sim bootloader, pid \d+\); stop"):
        SerialBoard(board)
    loader.kill()
    with SerialBoard(board) as serial:
        serial.wait_for_repl()
        proc = subprocess.run([tool("mpota"), "sim", "bootloader", "--flash", str(board.flash)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "in use (mpota sim serial" in proc.stderr
        assert proc.stderr.count("\n") == 1
