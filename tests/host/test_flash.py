"""``mpota flash``: the plan is checked without a device, then real esptool writes it
to a mock ESP32 ROM bootloader (esp32-mock-bootloader, a subprocess on loopback),
the flash is read back, and the simulated board boots what was written."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from esp32_mock_bootloader import mock_bootloader
from esptool.cmds import attach_flash, connect_esp, run_stub, write_flash

from helpers import BOARD_4MB, BOARD_8MB, tool
from mpota_host import board as boards
from mpota_host.errors import BoardError, FirmwareError, FlashError
from mpota_host.firmware import build_image
from mpota_host.flashing import FlashRegion, flash_firmware, plan_flash
from mpota_host.partition_table import parse_csv, to_binary
from mpota_host.sim.harness import SimBoard

# MicroPython's ports/esp32/partitions-4MiB.csv: the non-OTA ESP32_GENERIC build.
NON_OTA_CSV = """
nvs,      data, nvs,     0x9000,  0x6000,
phy_init, data, phy,     0xf000,  0x1000,
factory,  app,  factory, 0x10000, 0x1F0000,
vfs,      data, fat,     0x200000, 0x200000,
"""
FLASH_4MB = 4 * 1024 * 1024


def full_image(app: bytes, table: bytes, chip_id: int = 0, base: int = 0x1000) -> bytes:
    """A MicroPython-style full-flash image: bootloader, table at 0x8000, app at 0x10000."""
    bootloader = build_image("bootloader", size=8192, chip_id=chip_id)
    image = bytearray(b"\xff" * (0x10000 - base + len(app)))
    image[0x1000 - base : 0x1000 - base + len(bootloader)] = bootloader
    image[0x8000 - base : 0x8000 - base + len(table)] = table
    image[0x10000 - base :] = app
    return bytes(image)


@pytest.fixture
def app() -> bytes:
    return build_image("1.2.3", size=64 * 1024)


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, bytes], Path]:
    def make(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return make


def table_of(board: Path) -> bytes:
    return boards.load(board).table_binary()


def joined(regions: list[FlashRegion], start: int) -> bytes:
    """The regions as one image from ``start``; they must be contiguous."""
    out = b""
    for r in regions:
        assert r.offset == start + len(out), f"gap or overlap before 0x{r.offset:x}"
        out += r.data
    return out


# the plan: no device needed


def test_full_image_written_whole_with_otadata_erased(
    app: bytes, write: Callable[[str, bytes], Path]
) -> None:
    image = bytearray(full_image(app, table_of(BOARD_4MB)))
    image[0xD000 - 0x1000 : 0xD010 - 0x1000] = b"\x01" * 16  # a stale otadata entry
    regions = plan_flash(BOARD_4MB, write("firmware.bin", bytes(image)))

    assert [r.offset for r in regions] == [0x1000, 0xD000, 0xF000]
    expected = image[:]
    expected[0xD000 - 0x1000 : 0xF000 - 0x1000] = b"\xff" * 0x2000
    assert joined(regions, 0x1000) == expected
    assert regions[0].what == "bootloader, partition table, nvs (erased)"
    assert regions[1].what.startswith("otadata (erased")
    assert regions[2].what == "phy_init (erased), ota_0: app 1.2.3"


def test_full_image_merged_from_zero_is_written_from_the_bootloader(
    app: bytes, write: Callable[[str, bytes], Path]
) -> None:
    at_0x1000 = plan_flash(BOARD_4MB, write("a.bin", full_image(app, table_of(BOARD_4MB))))
    from_zero = full_image(app, table_of(BOARD_4MB), base=0)
    assert plan_flash(BOARD_4MB, write("b.bin", from_zero)) == at_0x1000


def test_app_only_goes_to_ota_0_with_the_boards_table(
    app: bytes, write: Callable[[str, bytes], Path]
) -> None:
    regions = plan_flash(BOARD_4MB, write("micropython.bin", app))
    assert [(r.offset, len(r.data)) for r in regions] == [
        (0x8000, 0xC00), (0xD000, 0x2000), (0x10000, len(app))
    ]
    assert regions[0].data == table_of(BOARD_4MB)
    assert regions[1].data == b"\xff" * 0x2000
    assert regions[2].data == app and regions[2].what == "ota_0: app 1.2.3"


def test_full_image_of_a_non_ota_build_is_refused(
    app: bytes, write: Callable[[str, bytes], Path]
) -> None:
    table = to_binary(parse_csv(NON_OTA_CSV, FLASH_4MB))
    path = write("ESP32_GENERIC.bin", full_image(app, table))
    with pytest.raises(FirmwareError, match="has no ota_0/ota_1") as e:
        plan_flash(BOARD_4MB, path)
    assert "ESP32_GENERIC-OTA" in str(e.value) and "factory" in str(e.value)


def test_full_image_of_another_boards_layout_names_that_board(
    app: bytes, write: Callable[[str, bytes], Path]
) -> None:
    path = write("fw8.bin", full_image(app, table_of(BOARD_8MB)))
    with pytest.raises(FirmwareError, match="--board esp32-generic-8mb"):
        plan_flash(BOARD_4MB, path)
    assert plan_flash(BOARD_8MB, path)[-1].what.endswith("ota_0: app 1.2.3")


@pytest.mark.parametrize("kind", ["full", "app-only"])
def test_wrong_chip_is_refused(write: Callable[[str, bytes], Path], kind: str) -> None:
    s3_app = build_image("1.2.3", size=16 * 1024, chip_id=9)
    data = full_image(s3_app, table_of(BOARD_4MB), chip_id=9) if kind == "full" else s3_app
    with pytest.raises(FirmwareError, match=r"built for esp32s3 \(chip id 9\)"):
        plan_flash(BOARD_4MB, write("s3.bin", data))


def test_app_of_another_chip_inside_a_full_image_is_refused(
    write: Callable[[str, bytes], Path]
) -> None:
    s3_app = build_image("1.2.3", size=16 * 1024, chip_id=9)
    path = write("mixed.bin", full_image(s3_app, table_of(BOARD_4MB)))
    with pytest.raises(FirmwareError, match=r"the app in .*0xf000.* built for esp32s3"):
        plan_flash(BOARD_4MB, path)


def test_full_image_for_a_chip_with_its_bootloader_at_0_is_refused(
    app: bytes, write: Callable[[str, bytes], Path]
) -> None:
    image = bytearray(full_image(app, table_of(BOARD_4MB), base=0))
    image[: 0x1000] = build_image("bootloader", size=4096, chip_id=9)  # an ESP32-S3 layout
    with pytest.raises(FirmwareError, match="built for another chip"):
        plan_flash(BOARD_4MB, write("s3-full.bin", bytes(image)))


@pytest.mark.parametrize("kind", ["full", "app-only"])
def test_too_big_for_the_slot_is_refused(write: Callable[[str, bytes], Path], kind: str) -> None:
    big = build_image("9.9.9", size=0x180000 + 4096)
    data = full_image(big, table_of(BOARD_4MB)) if kind == "full" else big
    with pytest.raises(FirmwareError, match="0x180000"):
        plan_flash(BOARD_4MB, write("big.bin", data))


def test_full_image_past_the_end_of_flash_is_refused(
    tmp_path: Path, write: Callable[[str, bytes], Path]
) -> None:
    board_dir = tmp_path / "tiny"
    board_dir.mkdir()
    (board_dir / "board.json").write_text(json.dumps({
        "name": "tiny-1mb", "chip": "esp32", "chip_id": 0, "flash_size": 0x100000,
        "slots": ["ota_0", "ota_1"],
    }))
    (board_dir / "partitions.csv").write_text(
        "nvs, data, nvs, 0x9000, 0x4000,\notadata, data, ota, 0xd000, 0x2000,\n"
        "phy_init, data, phy, 0xf000, 0x1000,\n"
        "ota_0, app, ota_0, 0x10000, 0x70000,\nota_1, app, ota_1, 0x80000, 0x70000,\n"
    )
    big = build_image("9.9.9", size=0x100000)
    with pytest.raises(FirmwareError, match="past the 0x100000-byte flash"):
        plan_flash(board_dir, write("big.bin", full_image(big, table_of(board_dir))))


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, world\n" * 1000, bytes(range(256)) * 256, b"\xe9" + b"\0" * 4000],
    ids=["empty", "text", "bytes", "bad-header"],
)
def test_garbage_is_refused(write: Callable[[str, bytes], Path], data: bytes) -> None:
    with pytest.raises(FirmwareError, match=r"not an ESP32|not a valid app image|corrupt"):
        plan_flash(BOARD_4MB, write("junk.bin", data))


def test_corrupt_partition_table_is_refused(
    app: bytes, write: Callable[[str, bytes], Path]
) -> None:
    image = bytearray(full_image(app, table_of(BOARD_4MB)))
    image[0x7000 + 40] ^= 0x01  # inside the first entry: the MD5 entry no longer matches
    with pytest.raises(FirmwareError, match="partition table at file offset 0x7000 is unreadable"):
        plan_flash(BOARD_4MB, write("corrupt.bin", bytes(image)))


def test_board_without_otadata_is_refused(
    tmp_path: Path, app: bytes, write: Callable[[str, bytes], Path]
) -> None:
    board_dir = tmp_path / "no-otadata"
    board_dir.mkdir()
    (board_dir / "board.json").write_text(json.dumps({
        "name": "no-otadata", "chip": "esp32", "chip_id": 0, "flash_size": FLASH_4MB,
        "slots": ["ota_0", "ota_1"],
    }))
    (board_dir / "partitions.csv").write_text(
        "nvs, data, nvs, 0x9000, 0x4000,\n"
        "ota_0, app, ota_0, 0x10000, 0x180000,\nota_1, app, ota_1, 0x190000, 0x180000,\n"
    )
    with pytest.raises(BoardError, match="no otadata"):
        plan_flash(board_dir, write("micropython.bin", app))


def test_cli_refuses_before_opening_the_port(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not firmware")
    proc = subprocess.run(
        [tool("mpota"), "flash", "--port", str(tmp_path / "no-such-port"), "--board",
         "esp32-generic-4mb", str(junk)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "mpota: error:" in proc.stderr and "not an ESP32 firmware image" in proc.stderr


def test_no_port_is_a_flash_error(app: bytes, write: Callable[[str, bytes], Path]) -> None:
    with pytest.raises(FlashError, match="no ESP32 bootloader answered on /dev/mpota-no-such"):
        flash_firmware("/dev/mpota-no-such-port", BOARD_4MB, write("micropython.bin", app))


# real esptool against a mock ROM bootloader


@pytest.fixture
def mock_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """mock_port(chip) -> socket:// URL of a mock bootloader on 127.0.0.1 that keeps its
    flash across connections and exits by itself after a minute at most."""
    monkeypatch.setenv("ESP32_MOCK_BOOTLOADER_STATE_DIR", str(tmp_path / "mock-state"))
    started = []

    def start(chip: str) -> str:
        mock = mock_bootloader(chip=chip, timeout=60)
        started.append(mock)
        return mock.url()

    yield start
    for mock in started:
        mock.stop()


def assert_flash(port: str, start: int, expected: bytes, chip: str = "esp32") -> None:
    """The flash from ``start`` holds ``expected``, read back through esptool as MD5s
    (the stub computes them on the chip): one command per check whatever the length,
    with timeouts that scale with the size (esptool's md5_timeout_per_mb), where a bulk
    read_flash waits a fixed 3 s for every 4 KiB frame and fails when the mock
    bootloader is starved of CPU. A mismatch is located to its 64 KiB block."""
    with connect_esp(port=port, chip=chip) as rom:
        esp = run_stub(rom)
        attach_flash(esp)
        if esp.flash_md5sum(start, len(expected)) == hashlib.md5(expected).hexdigest():
            return
        for at in range(0, len(expected), 0x10000):
            block = expected[at : at + 0x10000]
            assert esp.flash_md5sum(start + at, len(block)) == hashlib.md5(block).hexdigest(), (
                f"flash differs from what was written in 0x{start + at:x}+0x{len(block):x}")
        raise AssertionError("flash differs from what was written")


def test_flash_full_image_through_esptool_and_boot_it(
    tmp_path: Path, app: bytes, write: Callable[[str, bytes], Path],
    mock_port: Callable[[str], str],
) -> None:
    port = mock_port("esp32")
    with connect_esp(port=port, chip="esp32") as rom:  # an earlier firmware chose ota_1
        write_flash(run_stub(rom), [(0xD000, b"\x02\x00\x00\x00" + b"\x5a" * 28)])
    image = full_image(app, table_of(BOARD_4MB))
    report = flash_firmware(port, BOARD_4MB, write("firmware.bin", image))

    assert report.board == "esp32-generic-4mb" and report.chip.startswith("ESP32")
    assert report.flash_size == "4MB" and report.notes == ()
    assert [r[0] for r in report.regions] == [0x1000, 0xD000, 0xF000]
    flash = bytearray(b"\xff" * FLASH_4MB)
    flash[0x1000 : 0x1000 + len(image)] = image  # the bootloader, table and app
    flash[0xD000:0xF000] = b"\xff" * 0x2000  # otadata erased
    assert flash[0x8000:0x8C00] == table_of(BOARD_4MB)
    assert_flash(port, 0, bytes(flash))  # all 4 MiB: nothing past the image either

    sim = SimBoard.create(BOARD_4MB, write("app.bin", app), tmp_path / "board.flash")
    sim.flash.write_bytes(flash)
    record = sim.boot(max_boots=1)[-1]
    assert (record.slot, record.version, record.ended) == ("ota_0", "1.2.3", "repl")


@pytest.mark.parametrize("name", ["esp32-s3-generic-4mb", "esp32-c6-generic-4mb"])
def test_flash_a_full_image_of_a_chip_with_its_bootloader_at_0(
    tmp_path: Path, write: Callable[[str, bytes], Path], mock_port: Callable[[str], str],
    name: str,
) -> None:
    layout = boards.require(name)
    port = mock_port(layout.chip)
    app = build_image("1.2.3", size=64 * 1024, chip_id=layout.chip_id)
    image = full_image(app, layout.table_binary(), chip_id=layout.chip_id, base=0)
    image = build_image("bootloader", size=8192, chip_id=layout.chip_id) + image[8192:]
    report = flash_firmware(port, name, write("firmware.bin", image))
    assert report.board == name and report.notes == ()
    assert [r[0] for r in report.regions] == [0x0, 0xD000, 0xF000]
    assert report.regions[0][2] == "bootloader, partition table, nvs (erased)"
    flash = bytearray(b"\xff" * FLASH_4MB)
    flash[: len(image)] = image  # from 0x0: the bootloader of this chip first
    flash[0xD000:0xF000] = b"\xff" * 0x2000
    assert_flash(port, 0, bytes(flash), chip=layout.chip)

    sim = SimBoard.create(name, write("app.bin", app), tmp_path / "board.flash")
    sim.flash.write_bytes(flash)
    record = sim.boot(max_boots=1)[-1]
    assert (record.slot, record.version, record.ended) == ("ota_0", "1.2.3", "repl")


def test_flash_app_only_through_esptool(
    app: bytes, write: Callable[[str, bytes], Path], mock_port: Callable[[str], str]
) -> None:
    port = mock_port("esp32")
    report = flash_firmware(port, BOARD_4MB, write("micropython.bin", app), baud=115200)
    assert [r[0] for r in report.regions] == [0x8000, 0xD000, 0x10000]
    assert any("bootloader already on the board" in note for note in report.notes)
    flash = bytearray(b"\xff" * (0x10000 + len(app)))  # the bootloader area untouched
    flash[0x8000:0x8C00] = table_of(BOARD_4MB)
    flash[0x10000:] = app  # and otadata erased
    assert_flash(port, 0, bytes(flash))


def test_wrong_chip_on_the_port_is_refused_before_writing(
    app: bytes, write: Callable[[str, bytes], Path], mock_port: Callable[[str], str]
) -> None:
    port = mock_port("esp32c3")
    with pytest.raises(FlashError, match=r"is an ESP32-C3 \(chip id 5\).*esp32-generic-4mb"):
        flash_firmware(port, BOARD_4MB, write("micropython.bin", app))


def test_too_little_flash_on_the_board_is_refused(
    app: bytes, write: Callable[[str, bytes], Path], mock_port: Callable[[str], str]
) -> None:
    port = mock_port("esp32")  # the mock's flash chip reports 4 MB
    path = write("fw8.bin", full_image(app, table_of(BOARD_8MB)))
    with pytest.raises(FlashError, match="has 4MB of flash, but board esp32-generic-8mb needs 8MB"):
        flash_firmware(port, BOARD_8MB, path)
    assert_flash(port, 0, b"\xff" * 0x10000)  # nothing was written


def test_cli_flashes_and_prints_the_summary(
    app: bytes, write: Callable[[str, bytes], Path], mock_port: Callable[[str], str]
) -> None:
    port = mock_port("esp32")
    path = write("firmware.bin", full_image(app, table_of(BOARD_4MB)))
    proc = subprocess.run(
        [tool("mpota"), "flash", "--port", port, "--board", "esp32-generic-4mb", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout[proc.stdout.index("flashed esp32-generic-4mb on socket://") :]
    assert ": ESP32-D0WD" in summary and "4MB flash" in summary
    assert "0x00d000      8192 bytes  otadata (erased" in summary
    assert "ota_0: app 1.2.3" in summary


def test_progress_is_a_bar_with_bytes_and_rate_on_a_terminal(
    app: bytes, write: Callable[[str, bytes], Path], mock_port: Callable[[str], str]
) -> None:
    import io

    from rich.console import Console

    port = mock_port("esp32")
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=160)
    flash_firmware(port, BOARD_4MB, write("micropython.bin", app), out=terminal)
    shown = screen.getvalue()
    assert "0x010000 ota_0: app 1.2.3" in shown  # one bar per region, named
    assert "/s" in shown and "kB" in shown  # bytes and rate
    assert "Hash of data verified" in shown  # esptool's own lines still shown

    piped = io.StringIO()
    flash_firmware(port, BOARD_4MB, write("micropython.bin", app), out=Console(file=piped))
    assert "ota_0: app 1.2.3" not in piped.getvalue() and "\x1b[" not in piped.getvalue()
    assert "Hash of data verified" in piped.getvalue()


def test_ctrl_c_while_writing_says_what_state_the_board_is_in(
    app: bytes, write: Callable[[str, bytes], Path], mock_port: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mpota_host import flashing
    from mpota_host.errors import FlashInterrupted

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt  # as Ctrl-C arrives in the middle of esptool's write

    monkeypatch.setattr(flashing, "write_flash", interrupted)
    with pytest.raises(FlashInterrupted, match="interrupted while writing; the board may not "
                                               "boot until the same command succeeds") as e:
        flash_firmware(mock_port("esp32"), BOARD_4MB, write("micropython.bin", app))
    assert e.value.exit_code == 130


def test_an_absent_port_is_exit_code_3(app: bytes, write: Callable[[str, bytes], Path]) -> None:
    with pytest.raises(FlashError) as e:
        flash_firmware("/dev/mpota-no-such-port", BOARD_4MB, write("micropython.bin", app))
    assert e.value.exit_code == 3
