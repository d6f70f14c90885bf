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

from . import board
from .errors import FirmwareError, MpotaError, PartitionTableError
from .firmware import APP_DESC, APP_DESC_MAGIC, IMAGE_MAGIC, SimFirmware, read_sim_descriptor
from .partition_table import MAX_LENGTH, TABLE_OFFSET, Partition, from_binary

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
            f"{path} is a full image (a .bin: bootloader + partition table + app, written at "
            f"0x{base:x}), for flashing. A release needs the app-only image of the same build: "
            "the .app-bin micropython.org offers beside the .bin (micropython.bin in a build "
            "directory); 'mpota inspect' shows what a file holds."
        )
    return _app_facts(path, data)


def _app_facts(path: Path, data: bytes) -> ImageFacts:
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            image = LoadFirmwareImage("esp32", data)
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
        size=(image.data_length + (32 if image.append_digest else 0)
              if isinstance(image.data_length, int) else len(data)),
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


@dataclass(frozen=True)
class FullImageFacts:
    """A full image (.bin): bootloader, partition table and app, as flashed from ``base``."""

    path: Path
    size: int
    base: int
    bootloader_offset: int
    bootloader: ImageFacts
    partitions: tuple[Partition, ...]
    app_partition: Partition
    app: ImageFacts

    def flashes(self) -> list[str]:
        """Boards ``mpota flash`` writes this image to whole: same chip, same partition table."""
        return [b.name for b in _boards() if b.chip_id == self.app.chip_id
                and b.bootloader_offset == self.bootloader_offset
                and list(b.partitions) == list(self.partitions)]

    def app_fits(self) -> list[str]:
        """Boards of this chip whose OTA slots hold the app."""
        return [b.name for b in _boards() if b.chip_id == self.app.chip_id
                and b.slots and self.app.size <= b.slot_size]


def _boards() -> list[board.Board]:
    out = []
    for name in board.known():
        try:
            out.append(board.require(name))
        except MpotaError:
            continue  # a broken definition fits nothing; loading it names its fault
    return out


def inspect_full_image(path: Path) -> FullImageFacts:
    """Parse a full image: the bootloader, the partition table at 0x8000 and the first app.

    Raises:
        FirmwareError: ``path`` is not a full image, or a part of it is unreadable.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FirmwareError(f"cannot read firmware {path}: {e.strerror}") from e
    base = full_flash_offset(data[:0x9000])
    if base is None:
        raise FirmwareError(f"{path} is not a full image: no partition table at file offset "
                            "0x7000 or 0x8000")
    # ESP32/S2 images start at their bootloader (0x1000); S3/C3/C6 ones at 0x0, theirs
    boot = base if data[:1] == b"\xe9" else 0x1000
    table_at = TABLE_OFFSET - base
    try:
        parts = from_binary(data[table_at : table_at + MAX_LENGTH])
    except PartitionTableError as e:
        raise FirmwareError(f"{path}: the partition table at file offset 0x{table_at:x} is "
                            f"unreadable ({e})") from e
    apps = [p for p in parts if p.type == 0]
    if not apps:
        raise FirmwareError(f"{path}: its partition table has no app partition")
    app_part = min(apps, key=lambda p: (p.subtype != 0, p.subtype))  # factory, else ota_0
    at = app_part.offset - base
    app_data = data[at : at + app_part.size]
    where = f"{path} (file offset 0x{at:x}, flash 0x{app_part.offset:x})"
    if not app_data or app_data[0] != IMAGE_MAGIC:
        raise FirmwareError(f"{where}: no app image in {app_part.label}")
    loader = data[boot - base : table_at]
    return FullImageFacts(
        path=path, size=len(data), base=base, bootloader_offset=boot,
        bootloader=_app_facts(path, loader),
        partitions=tuple(parts), app_partition=app_part,
        app=_app_facts(path, app_data),
    )


def image_info(path: Path) -> dict[str, object]:
    """What ``mpota inspect FIRMWARE`` shows, for an app-only image or a full image."""
    with path.open("rb") as f:
        head = f.read(0x9000)
    if full_flash_offset(head) is None:
        facts = inspect_image(path)
        info = {"firmware": str(path), "kind": "app-only image (.app-bin): for releases",
                **_app_info(facts)}
        info["fits_boards"] = [b.name for b in _boards() if b.chip_id == facts.chip_id
                               and b.slots and facts.size <= b.slot_size] or "(no known board)"
        return info
    full = inspect_full_image(path)
    flashes = full.flashes()
    return {
        "firmware": str(path), "size": full.size,
        "kind": f"full image (.bin): for flashing at 0x{full.base:x}",
        "bootloader": f"0x{full.bootloader_offset:x}: {full.bootloader.chip_name}, "
                      f"{full.bootloader.segments} segments, checksum "
                      f"{'valid' if full.bootloader.checksum_valid else 'WRONG'}",
        "partition_table": [f"{p.label} {p.type_name} {p.subtype_name} 0x{p.offset:x} "
                            f"0x{p.size:x}" for p in full.partitions],
        "app_partition": f"{full.app_partition.label} at 0x{full.app_partition.offset:x}",
        **_app_info(full.app, "app_size"),
        "flash_boards": flashes or (
            "(no known board has this partition table"
            + ("; it has no OTA slots: not an OTA build" if not any(
                p.is_ota_slot for p in full.partitions) else "") + ")"),
        "app_fits_boards": full.app_fits() or "(no known board)",
    }


def _app_info(facts: ImageFacts, size_key: str = "size") -> dict[str, object]:
    info: dict[str, object] = {
        size_key: facts.size, "chip": facts.chip_name,
        "chip_id": facts.chip_id, "segments": facts.segments,
        "checksum_valid": facts.checksum_valid, "hash_appended": facts.hash_appended,
        "hash_valid": facts.hash_valid, "app_version": facts.version or "(empty)",
        "project": facts.project or "(empty)",
    }
    if facts.sim is not None:
        info["simulated_behaviour"] = facts.sim.behaviour
    return info
