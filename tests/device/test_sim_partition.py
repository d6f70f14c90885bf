"""esp32.Partition on the simulated board behaves as on an ESP32 (ARCHITECTURE section 4)."""

from __future__ import annotations

import struct
import zlib

from helpers import PRELUDE, results, run_device
from mpota_host.sim.harness import SimBoard

OTADATA = 0xD000


def device(board: SimBoard, code: str) -> list:
    return results(run_device(board, PRELUDE + code))


def otadata(board: SimBoard) -> list[tuple[int, int, int]]:
    raw = board.flash.read_bytes()
    out = []
    for i in range(2):
        seq, _label, state, crc = struct.unpack_from("<I20sII", raw, OTADATA + i * 0x1000)
        out.append((seq, state, crc))
    return out


def esp_crc(seq: int) -> int:
    # esp_rom_crc32_le(UINT32_MAX, &seq, 4), as otatool.py computes it
    return zlib.crc32(struct.pack("<I", seq), 0xFFFFFFFF)


def test_crc_matches_esp_idf_vectors() -> None:
    assert [esp_crc(1), esp_crc(2), esp_crc(3)] == [0x4743989A, 0x55F63774, 0xED4A5011]


def test_find_info_and_repr(booted: SimBoard) -> None:
    out = device(
        booted,
        """
from esp32 import Partition
apps = Partition.find(Partition.TYPE_APP)
result([p.info() for p in apps])
result([p.info()[4] for p in Partition.find(Partition.TYPE_DATA)])
result([p.info()[4] for p in Partition.find(Partition.TYPE_DATA, label="nvs")])
result(repr(Partition("ota_1")))
result(Partition(Partition.RUNNING).info()[4])
result(Partition(Partition.BOOT).info()[4])
result(err(Partition, "nope"))
result(err(Partition, 7))
""",
    )
    assert out[0] == [
        [0, 0x10, 0x10000, 0x180000, "ota_0", False],
        [0, 0x11, 0x190000, 0x180000, "ota_1", False],
    ]
    # MicroPython registers "vfs" (data, fat) over the rest of the flash at run time
    assert out[1] == ["nvs", "otadata", "phy_init", "vfs"]
    assert out[2] == ["nvs"]
    assert out[3] == (
        "<Partition type=0, subtype=17, address=1638400, size=1572864, label=ota_1, encrypted=0>"
    )
    assert out[4] == "ota_0" and out[5] == "ota_0"
    assert out[6] == [2]  # OSError(ENOENT)
    assert out[7] == ["ValueError"]


def test_vfs_partition_spans_rest_of_flash(booted: SimBoard) -> None:
    (info,) = device(
        booted,
        """
from esp32 import Partition
result(Partition.find(Partition.TYPE_DATA, label="vfs")[0].info())
""",
    )
    assert info == [1, 0x81, 0x310000, 0xF0000, "vfs", False]


def test_writeblocks_erases_first_and_offset_write_does_not(booted: SimBoard) -> None:
    out = device(
        booted,
        """
from esp32 import Partition
p = Partition("ota_1")
buf = bytearray(4096)
p.writeblocks(3, b"\\xf0" * 4096)
p.writeblocks(3, b"\\x0f" * 4096)      # erase + write: the old bits are gone
p.readblocks(3, buf)
result(buf[0])
p.writeblocks(3, b"\\x3c" * 16, 100)   # no erase: NOR can only clear bits
p.readblocks(3, buf)
result([buf[99], buf[100], buf[115], buf[116]])
small = bytearray(8)
p.readblocks(3, small, 96)
result(list(small))
result(err(p.writeblocks, 4, b"x" * 100))   # not whole sectors
result(err(p.readblocks, 0x181, bytearray(16)))  # starts past the partition
result(err(p.readblocks, 0x17F, bytearray(8192)))
""",
    )
    assert out[0] == 0x0F
    assert out[1] == [0x0F, 0x0C, 0x0C, 0x0F]
    assert out[2] == [0x0F] * 4 + [0x0C] * 4
    assert out[3] == [-260, "ESP_ERR_INVALID_SIZE"]
    assert out[4] == [-258, "ESP_ERR_INVALID_ARG"]
    assert out[5] == [-260, "ESP_ERR_INVALID_SIZE"]


def test_ioctl(booted: SimBoard) -> None:
    out = device(
        booted,
        """
from esp32 import Partition
p = Partition("ota_1")
result([p.ioctl(4, 0), p.ioctl(5, 0), p.ioctl(1, 0), p.ioctl(3, 0), p.ioctl(99, 0)])
p.writeblocks(2, b"\\x00" * 4096)
result(p.ioctl(6, 2))
buf = bytearray(4096)
p.readblocks(2, buf)
result(buf == b"\\xff" * 4096)
result(Partition("ota_1", 512).ioctl(6, 0))
""",
    )
    assert out[0] == [384, 4096, 0, 0, None]
    assert out[1] == 0 and out[2] is True
    assert out[3] == -22  # block_size != 4096: -MP_EINVAL returned, not raised


def test_counters_count_each_erase_and_write(booted: SimBoard) -> None:
    booted.clear_counters()
    device(
        booted,
        """
from esp32 import Partition
p = Partition("ota_1")
p.writeblocks(0, bytearray(8192))
p.writeblocks(0, b"ab", 10)
result(1)
""",
    )
    counters = booted.counters()
    assert counters.sector(0x190000) == (1, 2)
    assert counters.sector(0x191000) == (1, 1)
    assert counters.total == 2 + 1 + 1  # two sector erases, one 8 KiB write, one small write


def test_set_boot_refuses_an_invalid_image(booted: SimBoard) -> None:
    before = otadata(booted)
    out = device(
        booted,
        """
from esp32 import Partition
p = Partition("ota_1")
result(err(p.set_boot))
p.writeblocks(0, b"\\xe9" + b"\\x00" * 4095)
result(err(p.set_boot))
result(err(Partition("nvs").set_boot))
""",
    )
    assert out == [[-5379, "ESP_ERR_OTA_VALIDATE_FAILED"]] * 3
    assert otadata(booted) == before


def test_set_boot_writes_otadata_like_esp_idf(booted: SimBoard, firmware) -> None:
    assert otadata(booted)[0] == (1, 2, esp_crc(1))  # bootloader set ota_seq=1 VALID
    booted.clear_counters()
    booted.stage(firmware("2.0.0"))
    seq0, seq1 = otadata(booted)
    assert seq0 == (1, 2, esp_crc(1))
    assert seq1 == (2, 0, esp_crc(2))  # the OTHER sector: seq+1, NEW, CRC
    # one erase and one write of exactly the otadata sector
    assert booted.counters().sector(OTADATA + 0x1000) == (1, 1)
    assert booted.counters().sector(OTADATA) == (0, 0)
    (next_label,) = device(
        booted,
        """
from esp32 import Partition
result(Partition(Partition.BOOT).info()[4])
""",
    )
    assert next_label == "ota_1"


def test_each_slot_block_erased_and_written_once(booted: SimBoard, firmware) -> None:
    image = firmware("2.0.0", size=200 * 1024)
    booted.clear_counters()
    booted.stage(image)
    counters = booted.counters()
    blocks = -(-image.stat().st_size // 4096)
    for i in range(blocks):
        assert counters.sector(0x190000 + i * 4096) == (1, 1)
    assert counters.sector(0x190000 + blocks * 4096) == (0, 0)


def test_get_next_update(booted: SimBoard) -> None:
    out = device(
        booted,
        """
from esp32 import Partition
result(Partition(Partition.RUNNING).get_next_update().info()[4])
result(Partition("ota_1").get_next_update().info()[4])
result(Partition("nvs").get_next_update().info()[4])
""",
    )
    assert out == ["ota_1", "ota_0", "ota_0"]


def test_mark_valid_writes_only_when_needed(booted: SimBoard, firmware) -> None:
    booted.stage(firmware("2.0.0"))
    booted.write_file("main.py", "")
    assert booted.boot(max_boots=1)[-1].slot == "ota_1"
    assert otadata(booted)[1][:2] == (2, 1)  # PENDING_VERIFY
    booted.clear_counters()
    device(
        booted,
        """
from esp32 import Partition
Partition.mark_app_valid_cancel_rollback()
Partition.mark_app_valid_cancel_rollback()
result(1)
""",
    )
    assert otadata(booted)[1] == (2, 2, esp_crc(2))
    assert booted.counters().total == 2  # one erase + one write; the second call wrote nothing


def test_writing_the_running_app_aborts(booted: SimBoard) -> None:
    run = run_device(
        booted,
        PRELUDE
        + """
from esp32 import Partition
Partition(Partition.RUNNING).writeblocks(0, bytearray(4096))
result("survived")
""",
    )
    assert run.ended == "panic"
    assert "RESULT" not in run.output
    assert "running app ota_0" in run.output


def test_board_without_otadata(tmp_path, firmware) -> None:
    board_dir = tmp_path / "factory-only"
    board_dir.mkdir()
    (board_dir / "board.json").write_text(
        '{"name": "factory-only", "chip": "esp32", "chip_id": 0, "flash_size": 4194304,'
        ' "slots": []}'
    )
    (board_dir / "partitions.csv").write_text(
        "nvs, data, nvs, 0x9000, 0x6000\nfactory, app, factory, 0x10000, 0x1F0000\n"
    )
    board = SimBoard.create(board_dir, firmware("1.0.0"), tmp_path / "f.flash")
    assert board.boot(max_boots=1)[-1].slot == "factory"
    out = device(
        board,
        """
from esp32 import Partition
result(err(Partition.mark_app_valid_cancel_rollback))
result(err(Partition(Partition.RUNNING).get_next_update))
""",
    )
    assert out == [[-261, "ESP_ERR_NOT_FOUND"], [2]]


def test_set_boot_checks_chip_id_and_truncation(booted: SimBoard, tmp_path) -> None:
    from mpota_host.firmware import build_image

    s3 = tmp_path / "s3.bin"
    s3.write_bytes(build_image("2.0.0", size=16384, chip_id=9))
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(build_image("2.0.0", size=16384)[:-32])
    for image in (s3, truncated):
        run = booted.run("simstage", [str(image)])
        assert "ESP_ERR_OTA_VALIDATE_FAILED" in run.output, run.output
    assert otadata(booted)[1] == (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)


def test_set_boot_to_the_running_slot_keeps_the_sequence(booted: SimBoard) -> None:
    device(booted, """
from esp32 import Partition
Partition("ota_0").set_boot()
result(1)
""")
    # esp_rewrite_ota_data: smallest seq >= current that maps to ota_0 is 1 again,
    # written NEW into the other sector; on a tie sector 0 wins, so nothing changes.
    assert otadata(booted) == [(1, 2, esp_crc(1)), (1, 0, esp_crc(1))]
    assert booted.status()["boot_slot"] == "ota_0"


def test_update_fits_a_64k_heap(booted: SimBoard, firmware) -> None:
    image = firmware("2.0.0", size=1536 * 1024)
    run = booted.run("simstage", [str(image)], heapsize="64K")
    assert run.ended == "exit:0", run.output
    booted.write_file("main.py", "")
    records = booted.boot(max_boots=1, heapsize="64K")
    assert (records[0].slot, records[0].version, records[0].ended) == ("ota_1", "2.0.0", "repl")


def test_power_cut_tears_the_operation_and_kills_at_once(booted: SimBoard) -> None:
    device(booted, """
from esp32 import Partition
Partition("ota_1").writeblocks(0, bytearray(4096))
result(1)
""")
    booted.cut_power_at(1)
    run = run_device(booted, PRELUDE + """
from esp32 import Partition
try:
    Partition("ota_1").writeblocks(0, b"\\x55" * 4096)
finally:
    result("finally ran")
""")
    booted.cut_power_at(None)
    assert run.ended == "power-cut erase 0x190000"
    assert "finally ran" not in run.output
    sector = booted.flash.read_bytes()[0x190000:0x191000]
    assert sector[:2048] == b"\xff" * 2048  # the erase got half-way
    assert sector[2048:] == b"\x00" * 2048
    booted.cut_power_at(2)
    run_device(booted, "from esp32 import Partition\n"
               "Partition('ota_1').writeblocks(0, b'\\x55' * 4096)\n")
    booted.cut_power_at(None)
    sector = booted.flash.read_bytes()[0x190000:0x191000]
    assert sector[:2048] == b"\x55" * 2048 and sector[2048:] == b"\xff" * 2048


TIMED_BLOCK = """
import json, time
from esp32 import Partition
p = Partition("ota_1")
buf = bytearray(4096)
for i in range(4096):
    buf[i] = i * 7 & 0xFF
t0 = time.ticks_us()
p.writeblocks(5, buf)                 # one block: a sector erase, then 16 pages programmed
erase_program = time.ticks_diff(time.ticks_us(), t0)
t0 = time.ticks_us()
p.writeblocks(5, b"\\x00" * 300, 200) # no erase: bytes 200..499 span pages 0 and 1
program_only = time.ticks_diff(time.ticks_us(), t0)
p.readblocks(5, buf)
print("RESULT " + json.dumps([erase_program, program_only, list(buf[195:205]), list(buf[498:502])]))
"""


def _timed_block(board: SimBoard, timing: str | None) -> list:
    script = board.sim_dir / "timed_block.py"
    script.write_text(TIMED_BLOCK)
    env = {"MPOTA_SIM_FLASH_TIMING": timing} if timing else None
    return results(board.run(script, env=env))[0]


def test_flash_timing_model_holds_the_vm_per_erase_and_page(booted: SimBoard) -> None:
    booted.clear_counters()
    off = _timed_block(booted, None)
    counted_off = booted.counters().sector(0x195000)
    booted.clear_counters()
    on = _timed_block(booted, "datasheet")
    # the W25Q32JV's typical figures: a sector erase 45 ms and 16 pages of
    # 0.4 ms; the second write touches 2 pages (a lower bound: sleeping never
    # returns early, so this cannot fail on a slow host)
    assert on[0] >= 45_000 + 16 * 400
    assert on[1] >= 2 * 400
    # the model changes the time only: the same bytes and the same counted operations
    assert on[2:] == off[2:] and off[2] == [195 * 7 & 0xFF, 196 * 7 & 0xFF, 197 * 7 & 0xFF,
                                           198 * 7 & 0xFF, 199 * 7 & 0xFF, 0, 0, 0, 0, 0]
    assert booted.counters().sector(0x195000) == counted_off == (1, 2)


def test_flash_timing_model_refuses_an_unknown_name(booted: SimBoard) -> None:
    script = booted.sim_dir / "timed_block.py"
    script.write_text(TIMED_BLOCK)
    run = booted.run(script, env={"MPOTA_SIM_FLASH_TIMING": "fast"})
    assert "MPOTA_SIM_FLASH_TIMING=fast: use one of datasheet, max (or unset it)" in run.output
    assert "RESULT" not in run.output
