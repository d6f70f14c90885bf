"""Simulated firmware images are real ESP32 app images (esptool agrees)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import tool
from mpota_host.appimage import check_app_image, inspect_image
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
    with pytest.raises(FirmwareError, match=r"full-flash image.*app-only image"):
        inspect_image(path)


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
