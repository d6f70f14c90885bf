"""Facts about an ESP32 app image, read with esptool's own parser.

Used wherever the host must decide whether a file is a flashable OTA app
image: creating a simulated board, and (later) the release pre-flight check.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from esptool.bin_image import LoadFirmwareImage

from .errors import FirmwareError
from .firmware import APP_DESC, APP_DESC_MAGIC, SimFirmware, read_sim_descriptor

CHIP_NAMES = {0: "esp32", 2: "esp32s2", 5: "esp32c3", 9: "esp32s3", 12: "esp32c2", 13: "esp32c6"}
_TABLE_MAGIC = b"\xaa\x50"


@dataclass(frozen=True)
class ImageFacts:
    """What esptool and the app descriptor say about an app image."""

    path: Path
    size: int
    chip_id: int
    segments: int
    checksum_valid: bool
    hash_appended: bool
    hash_valid: bool
    version: str
    project: str
    sim: SimFirmware | None

    @property
    def chip_name(self) -> str:
        return CHIP_NAMES.get(self.chip_id, f"chip id {self.chip_id}")


def full_flash_offset(head: bytes) -> int | None:
    """Where a merged full-flash image expects to be written, if ``head`` starts one.

    Args:
        head: The first bytes of the file (0x9000 are enough).

    Returns:
        0x1000 for an ESP32 image with its bootloader first (the partition table
        magic 0xAA50 at file offset 0x7000), 0x0 for an image merged from the
        start of flash (magic at 0x8000), None for anything else.
    """
    for base in (0x1000, 0x0):  # ESP32 bootloader at 0x1000; merged-from-0 images
        pos = 0x8000 - base
        if head[pos : pos + 2] == _TABLE_MAGIC:
            return base
    return None


def inspect_image(path: Path) -> ImageFacts:
    """Parse ``path`` as an ESP32 app image; raises FirmwareError saying what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FirmwareError(f"cannot read firmware {path}: {e.strerror}") from e
    if not data or data[0] != 0xE9:
        first = f"0x{data[0]:02x}" if data else "nothing (empty file)"
        raise FirmwareError(
            f"{path} is not an ESP32 app image: first byte is {first}, expected 0xe9"
        )
    base = full_flash_offset(data[:0x9000])
    if base is not None:
        raise FirmwareError(
            f"{path} is a full-flash image (bootloader + partition table + app, written at "
            f"0x{base:x}). OTA needs the app-only image: the 'micropython.bin' of an OTA "
            "build (ESP32_GENERIC-OTA), which goes into an ota_N slot."
        )
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            image = LoadFirmwareImage("esp32", str(path))
    except Exception as e:  # esptool raises FatalError, struct.error, RuntimeError...
        raise FirmwareError(f"{path} is not a valid app image: {e}") from e
    version = project = ""
    if len(data) >= 0x20 + APP_DESC.size:
        fields = APP_DESC.unpack_from(data, 0x20)
        if fields[0] == APP_DESC_MAGIC:
            version = fields[3].split(b"\0")[0].decode(errors="replace")
            project = fields[4].split(b"\0")[0].decode(errors="replace")
    return ImageFacts(
        path=path,
        size=len(data),
        chip_id=image.chip_id,
        segments=len(image.segments),
        checksum_valid=image.checksum == image.calculate_checksum(),
        hash_appended=bool(image.append_digest),
        hash_valid=bool(image.append_digest) and image.stored_digest == image.calc_digest,
        version=version,
        project=project,
        sim=read_sim_descriptor(data),
    )


def check_app_image(path: Path, chip_id: int, slot_size: int) -> ImageFacts:
    """Refuse an image that the bootloader would not boot from a slot of this board."""
    facts = inspect_image(path)
    if facts.chip_id != chip_id:
        raise FirmwareError(
            f"{path} is built for {facts.chip_name} (chip id {facts.chip_id}); this board is "
            f"{CHIP_NAMES.get(chip_id, chip_id)} (chip id {chip_id}). "
            "Use the firmware built for this chip."
        )
    if not facts.checksum_valid:
        raise FirmwareError(f"{path}: image checksum is wrong; the file is corrupt")
    if facts.hash_appended and not facts.hash_valid:
        raise FirmwareError(f"{path}: appended SHA-256 does not match; the file is corrupt")
    if facts.size > slot_size:
        raise FirmwareError(
            f"{path} is {facts.size} bytes but an app slot holds {slot_size} bytes "
            f"(0x{slot_size:x}); use a board with larger slots or a smaller firmware"
        )
    return facts
