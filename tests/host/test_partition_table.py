"""Partition tables: CSV -> binary exactly as gen_esp32part, and back."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from helpers import BOARD_4MB, BOARD_8MB, tool
from mpota_host import board as boards
from mpota_host import partition_table as pt
from mpota_host.errors import BoardError, PartitionTableError

# gen_esp32part.py (ESP-IDF v5.5.2) output for MicroPython's partitions-4MiB-ota.csv:
# the MD5 entry sits at 0xA0 and carries this digest.
GEN_ESP32PART_4MB_MD5 = "6f91ac1bb2b49e61a1daefd12de800a2"


def test_4mb_table_matches_gen_esp32part() -> None:
    raw = boards.load(BOARD_4MB).table_binary()
    assert len(raw) == 0xC00
    assert raw[0xA0:0xA2] == b"\xeb\xeb" and raw[0xA2:0xB0] == b"\xff" * 14
    assert raw[0xB0:0xC0].hex() == GEN_ESP32PART_4MB_MD5
    assert raw[0xC0:] == b"\xff" * (0xC00 - 0xC0)


@pytest.mark.parametrize("board_dir", [BOARD_4MB, BOARD_8MB])
def test_binary_round_trips(board_dir: Path) -> None:
    board = boards.load(board_dir)
    parsed = pt.from_binary(board.table_binary())
    assert parsed == list(board.partitions)
    assert pt.parse_csv(pt.to_csv(parsed)) == parsed
    assert pt.to_binary(parsed) == board.table_binary()


def test_4mb_layout() -> None:
    board = boards.load(BOARD_4MB)
    layout = {p.label: (p.type, p.subtype, p.offset, p.size) for p in board.partitions}
    assert layout == {
        "nvs": (1, 0x02, 0x9000, 0x4000),
        "otadata": (1, 0x00, 0xD000, 0x2000),
        "phy_init": (1, 0x01, 0xF000, 0x1000),
        "ota_0": (0, 0x10, 0x10000, 0x180000),
        "ota_1": (0, 0x11, 0x190000, 0x180000),
    }
    assert board.slot_size == 0x180000


def test_8mb_slots() -> None:
    board = boards.load(BOARD_8MB)
    assert [(board.partition(s).offset, board.partition(s).size) for s in board.slots] == [
        (0x10000, 0x270000),
        (0x280000, 0x270000),
    ]


def test_entry_layout_is_gen_esp32part_struct() -> None:
    parts = pt.parse_csv("ota_0, app, ota_0, 0x10000, 1M, encrypted\n")
    raw = pt.to_binary(parts)
    assert raw[:32] == (
        b"\xaa\x50\x00\x10"
        + (0x10000).to_bytes(4, "little")
        + (0x100000).to_bytes(4, "little")
        + b"ota_0".ljust(16, b"\0")
        + (1).to_bytes(4, "little")
    )
    assert raw[48:64] == hashlib.md5(raw[:32]).digest()


def test_empty_offsets_are_aligned_like_gen_esp32part() -> None:
    parts = pt.parse_csv(
        "nvs, data, nvs, , 0x6000\nphy, data, phy, , 0x1000\n"
        "factory, app, factory, , 1M\nstore, data, , , 4K\n"
    )
    assert [(p.offset, p.size) for p in parts] == [
        (0x9000, 0x6000),
        (0xF000, 0x1000),
        (0x10000, 0x100000),
        (0x110000, 0x1000),
    ]
    assert parts[3].subtype == 0x06  # empty data subtype means "undefined"


def test_negative_size_means_end_at() -> None:
    parts = pt.parse_csv("ota_0, app, ota_0, 0x10000, -0x200000\n")
    assert parts[0].size == 0x1F0000


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("a, app, ota_0, 0x10000, 1M\nb, app, ota_1, 0x80000, 1M\n", "overlaps"),
        ("a, app, ota_0, 0x11000, 1M\n", "not aligned"),
        ("a, data, ota, 0xd000, 0x1000\n", "must be 0x2000"),
        ("a, data, nvs, 0x9000, 0x2000\n", "at least 0x3000"),
        ("a, app, ota_99, 0x10000, 1M\n", "unknown subtype"),
        ("a, app, , 0x10000, 1M\n", "needs a subtype"),
        ("a, app, ota_0, 0x10000, 1M\na, app, ota_1, 0x110000, 1M\n", "appears twice"),
        ("a, app, ota_0, 0x10000, lots\n", "not a number"),
        ("a, app, ota_0, 0x10000,\n", "no size"),
        ("a, app, ota_0, 0x10000, 1M, secret\n", "unknown flag"),
        ("a, app, ota_0, 0x4000, 1M\n", "overlaps the partition table"),
        ("averyveryverylonglabel, app, ota_0, 0x10000, 1M\n", "1-16 bytes"),
        ("# only a comment\n", "no entries"),
    ],
)
def test_bad_csv_is_refused(csv: str, message: str) -> None:
    with pytest.raises(PartitionTableError, match=message):
        pt.parse_csv(csv)


def test_partition_past_flash_end_is_refused() -> None:
    with pytest.raises(PartitionTableError, match="past the 0x200000-byte flash"):
        pt.parse_csv("a, app, ota_0, 0x10000, 0x200000\n", flash_size=0x200000)


def test_corrupt_binary_is_refused() -> None:
    raw = bytearray(boards.load(BOARD_4MB).table_binary())
    raw[40] ^= 1
    with pytest.raises(PartitionTableError, match="MD5 does not match"):
        pt.from_binary(bytes(raw))
    raw = bytearray(boards.load(BOARD_4MB).table_binary())
    raw[32] = 0x12
    with pytest.raises(PartitionTableError, match="magic"):
        pt.from_binary(bytes(raw))
    with pytest.raises(PartitionTableError, match="no end marker"):
        pt.from_binary(bytes(raw[:32]))


def test_unknown_board_lists_known_ones() -> None:
    with pytest.raises(BoardError, match="esp32-generic-4mb"):
        boards.load("no-such-board")


def test_cli_writes_flashable_table(tmp_path: Path) -> None:
    out = tmp_path / "pt.bin"
    proc = subprocess.run(
        [tool("mpota"), "partition-table", str(BOARD_4MB), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "flash at 0x8000" in proc.stdout
    assert out.read_bytes() == boards.load(BOARD_4MB).table_binary()


def test_cli_reports_bad_board(tmp_path: Path) -> None:
    proc = subprocess.run(
        [tool("mpota"), "partition-table", str(tmp_path), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "no board definition" in proc.stderr
