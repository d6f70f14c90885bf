"""Partition tables: CSV -> binary exactly as gen_esp32part, and back."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import BOARD_4MB, BOARD_8MB, tool
from mpota_host import board as boards
from mpota_host import keys
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


# board definitions: every family, unknown names, validation (docs/boards.md)

FAMILY_BOARDS = {
    # name: (chip, chip id, bootloader offset, flash MiB, slot size)
    "esp32-generic-4mb": ("esp32", 0, 0x1000, 4, 0x180000),
    "esp32-generic-8mb": ("esp32", 0, 0x1000, 8, 0x270000),
    "esp32-s2-generic-4mb": ("esp32s2", 2, 0x1000, 4, 0x180000),
    "esp32-s3-generic-4mb": ("esp32s3", 9, 0x0, 4, 0x180000),
    "esp32-s3-generic-8mb": ("esp32s3", 9, 0x0, 8, 0x270000),
    "esp32-c3-generic-4mb": ("esp32c3", 5, 0x0, 4, 0x180000),
    "esp32-c6-generic-4mb": ("esp32c6", 13, 0x0, 4, 0x180000),
    "esp32-c6-generic-8mb": ("esp32c6", 13, 0x0, 8, 0x270000),
}


def test_every_family_has_a_board_as_micropython_lays_it_out() -> None:
    assert set(FAMILY_BOARDS) <= set(boards.known())
    for name, (chip, chip_id, boot, mib, slot) in FAMILY_BOARDS.items():
        b = boards.require(name)
        assert (b.chip, b.chip_id, b.bootloader_offset, b.flash_size >> 20, b.slot_size) == (
            chip, chip_id, boot, mib, slot), name
        assert b.ota_file.endswith(".app-bin") and b.full_file.endswith(".bin")
        assert b.download_page.startswith("https://micropython.org/download/ESP32_GENERIC")
        table = pt.from_binary(b.table_binary())
        assert [p.label for p in table] == ["nvs", "otadata", "phy_init", "ota_0", "ota_1"]


@pytest.mark.parametrize("name", ["esp32-foo", "../boards/esp32-generic-4mb", ""])
def test_require_refuses_unknown_names_with_the_known_ones(name: str) -> None:
    with pytest.raises(BoardError, match=r"unknown board .*; known: .*esp32-c3-generic-4mb"):
        boards.require(name)


def test_custom_boards_from_mpota_boards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = tmp_path / "my-board"
    shutil.copytree(BOARD_4MB, custom)
    meta = json.loads((custom / "board.json").read_text()) | {"name": "my-board"}
    (custom / "board.json").write_text(json.dumps(meta))
    with pytest.raises(BoardError, match="unknown board 'my-board'"):
        boards.require("my-board")
    monkeypatch.setenv(boards.BOARDS_ENV, str(tmp_path))
    assert "my-board" in boards.known() and boards.require("my-board").name == "my-board"


VALID = {"name": "custom", "chip": "esp32s3", "chip_id": 9, "flash_size": 4194304,
         "slots": ["ota_0", "ota_1"]}
CSV = (BOARD_4MB / "partitions.csv").read_text()


@pytest.mark.parametrize(("change", "csv", "message"), [
    ({"chip_id": None}, CSV, r"board.json lacks chip_id: chip_id is the chip id"),
    ({"flashsize": 1}, CSV, r"unknown field flashsize; known: name, chip"),
    ({"chip_id": "9"}, CSV, r"chip_id must be a JSON int .*not \"9\""),
    ({"chip": "esp33"}, CSV, r"chip 'esp33' is not a chip esptool knows; known: .*esp32c3"),
    ({"chip_id": 0}, CSV, r"chip_id 0 is not esp32s3's; its images carry chip id 9"),
    ({"bootloader_offset": 0x1000}, CSV, r"bootloader_offset 0x1000 is wrong: .* from 0x0"),
    ({"flash_size": 3000000}, CSV, r"flash_size 3000000 is not a flash chip's size"),
    ({"flash_size": 2097152}, CSV,
     r"partitions.csv: ota_1 ends at 0x310000, past the 0x200000-byte flash"),
    ({"slots": ["ota_0", "ota_9"]}, CSV, r"slot 'ota_9' is not in partitions.csv"),
    ({"slots": ["ota_0", "nvs"]}, CSV, r"slot nvs is not an OTA app partition"),
    ({"slots": ["ota_0"]}, CSV, r"slots must list two or more different partition labels"),
    ({"name": "has space"}, CSV, r"name 'has space' must be the board's name, 1-32"),
    ({}, CSV.replace("otadata,  data, ota,     0xd000,   0x2000,", ""), r"no otadata partition"),
    ({"partition_table": "none.csv"}, CSV, r"cannot read partition CSV .*none.csv"),
])
def test_invalid_board_json_is_refused_in_one_line(tmp_path: Path, change: dict[str, object],
                                                   csv: str, message: str) -> None:
    meta = {k: v for k, v in (VALID | change).items() if v is not None}
    (tmp_path / "board.json").write_text(json.dumps(meta))
    (tmp_path / "partitions.csv").write_text(csv)
    with pytest.raises(BoardError, match=message) as e:
        boards.load(tmp_path)
    assert "\n" not in str(e.value)
    meta = VALID.copy()
    (tmp_path / "board.json").write_text(json.dumps(meta))
    (tmp_path / "partitions.csv").write_text(CSV)
    assert boards.load(tmp_path).name == "custom"


@pytest.mark.parametrize("argv", [
    ["partition-table", "esp32-foo", "--out", "x.bin"],
    ["flash", "--port", "/dev/null", "--board", "esp32-foo", "fw.bin"],
    ["release", "fw.bin", "--version", "1", "--version-code", "1", "--board", "esp32-foo",
     "--key", "k/signing.pem", "--out", "rel"],
])
def test_cli_refuses_an_unknown_board(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "fw.bin").write_bytes(b"x")
    keys.generate(tmp_path / "k")
    proc = subprocess.run([tool("mpota"), *argv], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "unknown board 'esp32-foo'; known: esp32-c3-generic-4mb, " in proc.stderr, proc.stderr
