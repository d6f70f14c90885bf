"""Simulated MicroPython firmware images: valid ESP32 app images that tell the
simulator how the firmware behaves after boot.

The image is what ``esptool elf2image`` produces for an ESP32 app: a 24-byte
header with extended header (chip id, hash-appended flag), one flash-mapped
DROM segment that starts with ``esp_app_desc_t`` (version, project name), the
XOR checksum (seed 0xEF) in the last byte of 16-byte padding, and the SHA-256
of everything before it.  After the app descriptor comes the sim descriptor
``MPOTA-SIM:version=...;behaviour=...`` and deterministic filler up to the
requested size, so images of different versions differ everywhere.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from esptool.targets import CHIP_DEFS

from .errors import FirmwareError

BEHAVIOURS = ("healthy", "health-fail", "crash", "hang")
IMAGE_MAGIC = 0xE9
CHECKSUM_SEED = 0xEF
DROM_ADDR = 0x3F400020  # the ESP32's; other chips: drom_addr(chip_id)
ENTRY_ADDR = 0x40081000
APP_DESC_MAGIC = 0xABCD5432
APP_DESC = struct.Struct("<II8s32s32s16s16s32s32sHHB3s72s")
SIM_MARKER = b"MPOTA-SIM:"
DEFAULT_SIZE = 256 * 1024
MIN_SIZE = 4096
FLASH_MODE_DIO = 2
FLASH_SIZE_CODES = {1: 0x00, 2: 0x10, 4: 0x20, 8: 0x30, 16: 0x40}


@dataclass(frozen=True)
class SimFirmware:
    """What a simulated firmware image says about itself."""

    version: str
    behaviour: str
    size: int


def _filler(seed: bytes, length: int) -> bytes:
    # SHA-256 in counter mode: fast, deterministic, no two versions alike.
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:length])


def drom_addr(chip_id: int) -> int:
    """Where an app's first (flash-mapped data) segment loads on this chip, as
    esptool's elf2image lays it out: the chip's DROM window + 0x20."""
    for target in CHIP_DEFS.values():
        if chip_id == target.IMAGE_CHIP_ID:
            return int(target.DROM_MAP_START) + 0x20
    raise FirmwareError(f"chip id {chip_id} is not a chip esptool knows")


def build_image(
    version: str,
    behaviour: str = "healthy",
    size: int = DEFAULT_SIZE,
    chip_id: int = 0,
    flash_mb: int = 4,
) -> bytes:
    """Return a complete app image of about ``size`` bytes (rounded to 16)."""
    if behaviour not in BEHAVIOURS:
        raise FirmwareError(
            f"unknown behaviour {behaviour!r}; choose one of {', '.join(BEHAVIOURS)}"
        )
    if not version or len(version.encode()) > 31 or ";" in version or "\n" in version:
        raise FirmwareError(f"version {version!r} must be 1-31 bytes without ';' or newlines")
    if size < MIN_SIZE:
        raise FirmwareError(f"size {size} is too small; the smallest image is {MIN_SIZE} bytes")
    desc = APP_DESC.pack(
        APP_DESC_MAGIC, 0, b"", version.encode(), b"micropython", b"00:00:00",
        b"Jan  1 2026", b"v5.5.2", hashlib.sha256(version.encode()).digest(),
        0, 0xFFFF, 16, b"", b"",
    )
    sim = SIM_MARKER + f"version={version};behaviour={behaviour}".encode() + b"\n"
    # header 24 + segment header 8 + data + checksum padding (1..16) + 32 hash
    data_len = (size - 24 - 8 - 16 - 32) // 4 * 4
    data_len = max(data_len, len(desc) + len(sim) + 4)
    fill = _filler(f"{version}/{behaviour}".encode(), data_len - len(desc) - len(sim))
    segment = desc + sim + fill
    header = struct.pack(
        "<BBBBI", IMAGE_MAGIC, 1, FLASH_MODE_DIO, FLASH_SIZE_CODES.get(flash_mb, 0x20), ENTRY_ADDR
    )
    # wp_pin, spi drive x3, chip_id, min_rev (deprecated), min/max rev full, reserved, hash flag
    extended = struct.pack("<BBBBHBHH4sB", 0xEE, 0, 0, 0, chip_id, 0, 0, 399, b"\0" * 4, 1)
    segment_header = struct.pack("<II", drom_addr(chip_id), len(segment))
    body = bytearray(header + extended + segment_header + segment)
    checksum = CHECKSUM_SEED
    for b in segment:
        checksum ^= b
    body += b"\0" * (15 - len(body) % 16) + bytes([checksum])
    body += hashlib.sha256(body).digest()
    return bytes(body)


def read_sim_descriptor(image: bytes) -> SimFirmware | None:
    """The sim descriptor of an image, or None for a real firmware."""
    start = image.find(SIM_MARKER, 0, 4096)
    if start < 0:
        return None
    text = image[start + len(SIM_MARKER) : image.index(b"\n", start)].decode()
    fields = dict(item.split("=", 1) for item in text.split(";") if "=" in item)
    return SimFirmware(fields.get("version", "?"), fields.get("behaviour", "?"), len(image))


def write_image(path: Path, version: str, behaviour: str, size: int = DEFAULT_SIZE,
                chip_id: int = 0, flash_mb: int = 4) -> SimFirmware:
    """Build an image and write it atomically to ``path``."""
    image = build_image(version, behaviour, size, chip_id, flash_mb)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(image)
    tmp.replace(path)
    return SimFirmware(version, behaviour, len(image))
