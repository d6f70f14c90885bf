"""Bootloader, rollback and power cuts on the simulated board (ARCHITECTURE section 4)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import BOARD_4MB, BOARD_8MB, tool
from mpota_host.sim.harness import SimBoard

# A minimal "agent": confirm the running image if it is on probation.
CONFIRM = """
from esp32 import Partition
Partition.mark_app_valid_cancel_rollback()
print("confirmed", Partition(Partition.RUNNING).info()[4])
"""
# An agent that arms the watchdog during probation, as the real one will.
ARM_WDT = "import machine\nmachine.WDT(timeout=300)\n"


def slot_states(board: SimBoard) -> tuple[str | None, list[str]]:
    status = board.status()
    return status["boot_slot"], [e["text"] for e in status["otadata"]]


def test_fresh_board_boots_ota0_and_records_seq(new_board) -> None:
    board = new_board()
    (record,) = board.boot(max_boots=1)
    assert (record.slot, record.version, record.ended) == ("ota_0", "1.0.0", "repl")
    assert "set actual ota_seq=1 in otadata[0]" in record.output
    assert slot_states(board) == ("ota_0", ["seq=1 state=VALID", "empty"])


def test_unconfirmed_reboot_rolls_back(booted: SimBoard, firmware) -> None:
    booted.stage(firmware("2.0.0"))
    assert slot_states(booted) == ("ota_1", ["seq=1 state=VALID", "seq=2 state=NEW"])
    booted.write_file("main.py", "import machine\nmachine.reset()\n")
    records = booted.boot(max_boots=2)
    assert [(r.slot, r.ended) for r in records] == [("ota_1", "reset"), ("ota_0", "reset")]
    assert "marked ABORTED (rollback)" in records[1].output
    assert slot_states(booted) == ("ota_0", ["seq=1 state=VALID", "seq=2 state=ABORTED"])


def test_confirmed_image_survives_later_reboots(booted: SimBoard, firmware) -> None:
    booted.stage(firmware("2.0.0"))
    booted.write_file("main.py", CONFIRM + "import machine\nmachine.reset()\n")
    records = booted.boot(max_boots=4)
    assert {r.slot for r in records} == {"ota_1"}
    assert slot_states(booted) == ("ota_1", ["seq=1 state=VALID", "seq=2 state=VALID"])


@pytest.mark.parametrize("behaviour", ["crash", "hang", "health-fail"])
def test_bad_firmware_rolls_back(booted: SimBoard, firmware, behaviour: str) -> None:
    booted.stage(firmware("2.0.0", behaviour))
    # boot.py arms the watchdog; main.py confirms only when the network works.
    booted.write_file("boot.py", ARM_WDT)
    booted.write_file(
        "main.py",
        """
import machine, network
w = network.WLAN(network.STA_IF)
w.active(True)
w.connect("ssid", "key")
if not w.isconnected():
    print("health check failed: no network")
    machine.reset()
"""
        + CONFIRM
        + "machine.WDT(timeout=100000)\n",
    )
    records = booted.boot(max_boots=4, timeout=20)
    first = {"crash": "panic", "hang": "wdt", "health-fail": "reset"}[behaviour]
    assert [(r.slot, r.behaviour, r.ended) for r in records] == [
        ("ota_1", behaviour, first),
        ("ota_0", "healthy", "repl"),
    ]
    assert records[1].reset_cause == (3 if behaviour == "hang" else 2)
    assert slot_states(booted) == ("ota_0", ["seq=1 state=VALID", "seq=2 state=ABORTED"])


def test_corrupt_image_in_other_slot_is_never_booted(booted: SimBoard, firmware) -> None:
    booted.stage(firmware("2.0.0"))
    raw = bytearray(booted.flash.read_bytes())
    raw[0x190000 + 30000] ^= 0x01  # one bit flips after set_boot
    booted.flash.write_bytes(raw)
    assert slot_states(booted)[0] == "ota_0"
    records = booted.boot(max_boots=2)
    assert [(r.slot, r.ended) for r in records] == [("ota_0", "repl")]
    assert "ota_1 at 0x190000: not bootable: checksum" in records[0].output
    # the otadata still points at ota_1: the app sees BOOT != RUNNING
    assert booted.status()["otadata"][1]["text"] == "seq=2 state=PENDING_VERIFY"


def test_no_bootable_app_stops(new_board) -> None:
    board = new_board()
    raw = bytearray(board.flash.read_bytes())
    raw[0x10000] = 0x00
    board.flash.write_bytes(raw)
    records = board.boot(max_boots=3)
    assert [r.ended for r in records] == ["no-app"]


def test_8mb_board_updates(new_board, firmware) -> None:
    board = new_board(board=BOARD_8MB)
    board.boot(max_boots=1)
    board.stage(firmware("2.0.0", size=1536 * 1024))
    board.write_file("main.py", CONFIRM)
    assert [(r.slot, r.version) for r in board.boot(max_boots=1)] == [("ota_1", "2.0.0")]
    assert board.status()["slots"][1]["addr"] == 0x280000


def _copy_board(template: SimBoard, dest: Path) -> SimBoard:
    flash = dest / "board.flash"
    shutil.copyfile(template.flash, flash)
    shutil.copytree(template.sim_dir, Path(str(flash) + ".sim"))
    return SimBoard(flash)


def _update_story(board: SimBoard, image: Path) -> str:
    """Stage, reboot, confirm. Returns 'done' or where the power was lost."""
    run = board.run("simstage", [str(image)])
    if run.ended.startswith("power-cut"):
        return "stage"
    assert run.ended == "exit:0", run.output
    records = board.boot(max_boots=3)
    if any(r.kind == "power-cut" for r in records):
        return "boot"
    return "done"


def test_power_cut_at_every_flash_operation_of_an_update(
    booted: SimBoard, firmware, tmp_path: Path
) -> None:
    """Every erase and write of stage + set_boot + bootloader + confirm, cut in turn."""
    image = firmware("2.0.0", size=5 * 4096)
    booted.write_file("main.py", CONFIRM)
    (tmp_path / "probe").mkdir()
    probe = _copy_board(booted, tmp_path / "probe")
    probe.clear_counters()
    assert _update_story(probe, image) == "done"
    total = probe.counters().total
    assert total == 2 * 5 + 2 + 2 + 2  # blocks, set_boot, NEW->PENDING, confirm
    outcomes = {}
    for n in range(1, total + 1):
        case = tmp_path / f"cut{n}"
        case.mkdir()
        board = _copy_board(booted, case)
        board.cut_power_at(n)
        where = _update_story(board, image)
        board.cut_power_at(None)
        # after the cut, the board must boot a valid image and settle
        records = board.boot(max_boots=3)
        assert records[-1].ended == "repl", (n, where, [r.line() for r in records])
        assert records[-1].version in ("1.0.0", "2.0.0")
        # and a retry of the update completes
        if records[-1].version == "1.0.0":
            assert _update_story(board, image) == "done"
            records = board.boot(max_boots=1)
        assert records[-1].version == "2.0.0", n
        status = board.status()
        assert status["boot_slot"] == "ota_1"
        outcomes[n] = where
    assert set(outcomes.values()) == {"stage", "boot"}


def test_power_cut_during_rollback_write(booted: SimBoard, firmware, tmp_path: Path) -> None:
    booted.stage(firmware("2.0.0", "crash"))
    booted.write_file("main.py", "")
    for n in (1, 2, 3, 4):  # NEW->PENDING erase/write, PENDING->ABORTED erase/write
        case = tmp_path / f"rb{n}"
        case.mkdir()
        board = _copy_board(booted, case)
        records = board.boot(max_boots=6, cut_at=n)
        assert records[-1].ended == "repl", [r.line() for r in records]
        assert records[-1].version == "1.0.0"


def test_cli_end_to_end(tmp_path: Path) -> None:
    def mpota(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool("mpota"), *args], capture_output=True, text=True, cwd=tmp_path, check=True
        )

    mpota("sim", "firmware", "--version", "1.0.0", "--out", "v1.bin")
    mpota("sim", "firmware", "--version", "2.0.0", "--behaviour", "crash", "--out", "v2.bin")
    assert (
        "ota_0 = v1.bin"
        in mpota(
            "sim", "new", "--board", str(BOARD_4MB), "--firmware", "v1.bin", "--flash", "b.flash"
        ).stdout
    )
    assert (
        "boot 1: reset_cause=PWRON -> ota_0 v1.0.0 (healthy) -> repl"
        in mpota("sim", "boot", "--flash", "b.flash").stdout
    )
    assert (
        "into ota_1" in mpota("sim", "stage", "--flash", "b.flash", "--firmware", "v2.bin").stdout
    )
    status = json.loads(mpota("sim", "status", "--flash", "b.flash", "--json").stdout)
    assert status["boot_slot"] == "ota_1"
    assert status["otadata"][1]["state"] == "NEW"
    assert status["slots"][1]["firmware"]["behaviour"] == "crash"
    out = mpota("sim", "boot", "--flash", "b.flash", "--max-boots", "5", "-v").stdout
    assert "ota_1 v2.0.0 (crash) -> panic" in out
    assert "boot 2: reset_cause=HARD -> ota_0 v1.0.0 (healthy) -> repl" in out
    assert "Guru Meditation" in out
    assert "boot_slot: ota_0" in mpota("sim", "status", "--flash", "b.flash").stdout
    assert "otadata" in mpota("sim", "counters", "--flash", "b.flash").stdout
    fail = subprocess.run(
        [tool("mpota"), "sim", "boot", "--flash", "nope.flash"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert fail.returncode == 2 and "does not exist" in fail.stderr
    fail = subprocess.run(
        [
            tool("mpota"),
            "sim",
            "new",
            "--board",
            str(BOARD_4MB),
            "--firmware",
            "v1.bin",
            "--flash",
            "b.flash",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert fail.returncode == 1 and "already exists" in fail.stderr


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["partition-table", "--help"],
        ["sim", "--help"],
        ["sim", "firmware", "--help"],
        ["sim", "new", "--help"],
        ["sim", "stage", "--help"],
        ["sim", "boot", "--help"],
        ["sim", "status", "--help"],
        ["sim", "counters", "--help"],
    ):
        proc = subprocess.run([tool("mpota"), *args], capture_output=True, text=True, check=True)
        assert "Usage:" in proc.stdout
