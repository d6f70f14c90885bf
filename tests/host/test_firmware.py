"""Simulated firmware images are real ESP32 app images (esptool agrees)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import tool
from mpota_host import board, partition_table
from mpota_host.appimage import check_app_image, image_info, inspect_image
from mpota_host.errors import FirmwareError
from mpota_host.firmware import BEHAVIOURS, build_image


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_esptool_image_info_accepts(firmware: Callable[..., Path], behaviour: str) -> None:
    path = firmware("2.0.0", behaviour, 1536 * 1024)
    proc = subprocess.run(
        [tool("esptool"), "--chip", "esp32", "image-info", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Checksum: " in proc.stdout and "(valid)" in proc.stdout.split("Checksum: ")[1]
    assert "Validation hash: " in proc.stdout
    assert proc.stdout.split("Validation hash: ")[1].split("\n")[0].endswith("(valid)")
    assert "App version: 2.0.0" in proc.stdout
    facts = inspect_image(path)
    assert facts.sim is not None and facts.sim.behaviour == behaviour
    assert facts.checksum_valid and facts.hash_valid and facts.chip_id == 0
    assert abs(facts.size - 1536 * 1024) < 64


def test_versions_differ_everywhere() -> None:
    a, b = build_image("1", size=8192), build_image("2", size=8192)
    assert len(a) == len(b)
    assert sum(x != y for x, y in zip(a[512:], b[512:], strict=True)) > 0.9 * (len(a) - 512)


def test_esptool_sees_a_flipped_byte(tmp_path: Path) -> None:
    raw = bytearray(build_image("1.0.0", size=16384))
    raw[5000] ^= 0x40
    path = tmp_path / "bad.bin"
    path.write_bytes(raw)
    proc = subprocess.run(
        [tool("esptool"), "--chip", "esp32", "image-info", str(path)],
        capture_output=True,
        text=True,
    )
    assert "invalid" in proc.stdout
    with pytest.raises(FirmwareError, match="checksum is wrong"):
        check_app_image(path, 0, 0x180000)


def test_tampered_hash_is_refused(tmp_path: Path) -> None:
    raw = bytearray(build_image("1.0.0", size=16384))
    raw[-1] ^= 1
    path = tmp_path / "bad.bin"
    path.write_bytes(raw)
    with pytest.raises(FirmwareError, match="SHA-256 does not match"):
        check_app_image(path, 0, 0x180000)


def test_full_flash_image_is_refused_with_advice(tmp_path: Path) -> None:
    # A merged image written at 0x1000: bootloader first, partition table at +0x7000.
    raw = bytearray(b"\xff" * 0x20000)
    raw[0:1] = b"\xe9"
    raw[0x7000:0x7002] = b"\xaa\x50"
    path = tmp_path / "ESP32_GENERIC-OTA-full.bin"
    path.write_bytes(raw)
    with pytest.raises(FirmwareError, match=r"full image \(a \.bin.*app-only image.*\.app-bin"):
        inspect_image(path)


def full_image(app: bytes, table: bytes, chip_id: int, base: int) -> bytes:
    """A MicroPython-style .bin from ``base``: bootloader at the chip's offset, table at
    0x8000, app at 0x10000 (as the ESP32's starts at 0x1000, the S3's at 0x0)."""
    bootloader = build_image("bootloader", size=8192, chip_id=chip_id)
    image = bytearray(b"\xff" * (0x10000 - base + len(app)))
    image[0:len(bootloader)] = bootloader
    image[0x8000 - base : 0x8000 - base + len(table)] = table
    image[0x10000 - base :] = app
    return bytes(image)


@pytest.mark.parametrize("name", ["esp32-generic-4mb", "esp32-s3-generic-8mb",
                                  "esp32-c6-generic-4mb"])
def test_inspect_shows_a_full_image(tmp_path: Path, name: str) -> None:
    layout = board.require(name)
    app = build_image("1.25.0", size=64 * 1024, chip_id=layout.chip_id)
    path = tmp_path / "firmware.bin"
    path.write_bytes(full_image(app, layout.table_binary(), layout.chip_id,
                                layout.bootloader_offset))
    info = image_info(path)
    assert info["kind"] == f"full image (.bin): for flashing at 0x{layout.bootloader_offset:x}"
    assert str(info["bootloader"]).startswith(f"0x{layout.bootloader_offset:x}: {layout.chip},")
    assert "ota_1 app ota_1 0x" in " ".join(map(str, info["partition_table"]))  # type: ignore
    assert info["app_partition"] == "ota_0 at 0x10000"
    assert info["app_version"] == "1.25.0" and info["chip_id"] == layout.chip_id
    assert info["app_size"] == len(app) and info["checksum_valid"] and info["hash_valid"]
    assert name in info["flash_boards"]  # type: ignore[operator]
    assert all(board.require(b).chip == layout.chip for b in info["app_fits_boards"])  # type: ignore


def test_inspect_names_a_non_ota_full_image(tmp_path: Path) -> None:
    table = partition_table.to_binary(partition_table.parse_csv(
        "nvs, data, nvs, 0x9000, 0x6000,\nphy_init, data, phy, 0xf000, 0x1000,\n"
        "factory, app, factory, 0x10000, 0x1F0000,\n"))  # partitions-4MiBplus.csv
    app = build_image("1.25.0", size=16 * 1024, chip_id=9)
    path = tmp_path / "ESP32_GENERIC_S3.bin"
    path.write_bytes(full_image(app, table, 9, 0))
    info = image_info(path)
    assert info["app_partition"] == "factory at 0x10000"
    assert "no OTA slots: not an OTA build" in str(info["flash_boards"])
    assert "esp32-s3-generic-8mb" in info["app_fits_boards"]  # type: ignore[operator]


def test_inspect_an_app_only_image_names_the_boards_it_fits(tmp_path: Path) -> None:
    path = tmp_path / "ESP32_GENERIC_C3.app-bin"
    path.write_bytes(build_image("1.25.0", size=16 * 1024, chip_id=5))
    info = image_info(path)
    assert info["kind"].startswith("app-only image (.app-bin)")  # type: ignore[union-attr]
    assert info["fits_boards"] == ["esp32-c3-generic-4mb"]


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(FirmwareError, match="first byte is 0x68, expected 0xe9"):
        inspect_image(path)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(FirmwareError, match="empty file"):
        inspect_image(empty)


def test_wrong_chip_and_oversize(tmp_path: Path) -> None:
    path = tmp_path / "s3.bin"
    path.write_bytes(build_image("1.0.0", size=8192, chip_id=9))
    with pytest.raises(FirmwareError, match="built for esp32s3"):
        check_app_image(path, 0, 0x180000)
    big = tmp_path / "big.bin"
    big.write_bytes(build_image("1.0.0", size=0x181000))
    with pytest.raises(FirmwareError, match="an app slot holds 1572864 bytes"):
        check_app_image(big, 0, 0x180000)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--behaviour", "explode"], "Invalid value for '--behaviour'"),
        (["--size", "lots"], "is not a size"),
        (["--size", "100"], "too small"),
    ],
)
def test_cli_firmware_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [
            tool("mpota"),
            "sim",
            "firmware",
            "--version",
            "1",
            "--out",
            str(tmp_path / "fw.bin"),
            *args,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
