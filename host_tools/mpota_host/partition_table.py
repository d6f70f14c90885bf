"""ESP-IDF partition tables: CSV to the binary flashed at 0x8000, and back.

The binary format is the one ESP-IDF's ``gen_esp32part.py`` writes: 32-byte
entries ``<2sBBLL16sL`` (magic 0x50AA, type, subtype, offset, size, label,
flags), one MD5 entry (0xEBEB, 14 bytes 0xFF, MD5 of the entries before it),
then 0xFF padding to 0xC00 bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import PartitionTableError

TABLE_OFFSET = 0x8000
MAX_LENGTH = 0xC00
ENTRY = struct.Struct("<2sBBLL16sL")
ENTRY_MAGIC = b"\xaa\x50"
MD5_MAGIC = b"\xeb\xeb"
SECTOR = 0x1000
APP_ALIGN = 0x10000

TYPES = {"app": 0x00, "data": 0x01}
APP_SUBTYPES = {"factory": 0x00, "test": 0x20, **{f"ota_{i}": 0x10 + i for i in range(16)}}
DATA_SUBTYPES = {
    "ota": 0x00,
    "phy": 0x01,
    "nvs": 0x02,
    "coredump": 0x03,
    "nvs_keys": 0x04,
    "efuse": 0x05,
    "undefined": 0x06,
    "esphttpd": 0x80,
    "fat": 0x81,
    "spiffs": 0x82,
    "littlefs": 0x83,
}
FLAGS = {"encrypted": 0x01, "readonly": 0x02}


@dataclass(frozen=True)
class Partition:
    """One entry of a partition table."""

    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def type_name(self) -> str:
        return {v: k for k, v in TYPES.items()}.get(self.type, f"0x{self.type:02x}")

    @property
    def subtype_name(self) -> str:
        names = APP_SUBTYPES if self.type == 0 else DATA_SUBTYPES if self.type == 1 else {}
        return {v: k for k, v in names.items()}.get(self.subtype, f"0x{self.subtype:02x}")

    @property
    def is_ota_slot(self) -> bool:
        return self.type == 0 and 0x10 <= self.subtype <= 0x1F


def _number(text: str, what: str, line: int) -> int:
    text = text.strip()
    multiplier = 1
    if not text:
        raise PartitionTableError(f"line {line}: {what} is empty")
    if text[-1:].upper() == "K":
        multiplier, text = 1024, text[:-1]
    elif text[-1:].upper() == "M":
        multiplier, text = 1024 * 1024, text[:-1]
    try:
        return int(text, 0) * multiplier
    except ValueError:
        raise PartitionTableError(
            f"line {line}: {what} {text!r} is not a number (use 0x1000, 4096, 4K or 1M)"
        ) from None


def _subtype(type_: int, text: str, line: int) -> int:
    names = APP_SUBTYPES if type_ == 0 else DATA_SUBTYPES if type_ == 1 else {}
    key = text.strip().lower()
    if key in names:
        return names[key]
    try:
        return int(key, 0)
    except ValueError:
        raise PartitionTableError(
            f"line {line}: unknown subtype {text!r}; known: {', '.join(sorted(names))}"
        ) from None


def parse_csv(text: str, flash_size: int | None = None) -> list[Partition]:
    """Parse a partition CSV as gen_esp32part does.

    Empty offsets are placed after the previous entry, aligned to 0x10000 for
    apps and 0x1000 for data; a negative size means "end at that offset".
    """
    parts: list[Partition] = []
    next_offset = TABLE_OFFSET + SECTOR
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in (line + ",,,,").split(",")]
        label, type_text, sub_text, off_text, size_text, flag_text = cells[:6]
        if not label or len(label.encode()) > 16:
            raise PartitionTableError(f"line {line_no}: label {label!r} must be 1-16 bytes")
        type_key = type_text.lower()
        type_ = TYPES[type_key] if type_key in TYPES else _number(type_text, "type", line_no)
        if not sub_text:
            if type_ == 0:
                raise PartitionTableError(f"line {line_no}: app partition {label} needs a subtype")
            sub_text = "undefined"
        subtype = _subtype(type_, sub_text, line_no)
        align = APP_ALIGN if type_ == 0 else SECTOR
        if off_text:
            offset = _number(off_text, "offset", line_no)
        else:
            offset = (next_offset + align - 1) // align * align
        if not size_text:
            raise PartitionTableError(f"line {line_no}: {label} has no size")
        size = _number(size_text, "size", line_no)
        if size < 0:
            size = -size - offset
        flags = 0
        for flag in filter(None, (f.strip() for f in flag_text.split(":"))):
            if flag not in FLAGS:
                raise PartitionTableError(f"line {line_no}: unknown flag {flag!r}")
            flags |= FLAGS[flag]
        parts.append(Partition(label, type_, subtype, offset, size, flags))
        next_offset = offset + size
    verify(parts, flash_size)
    return parts


def verify(parts: Iterable[Partition], flash_size: int | None = None) -> None:
    """Refuse what gen_esp32part refuses: overlaps, misaligned apps, duplicates."""
    ordered = sorted(parts, key=lambda p: p.offset)
    if not ordered:
        raise PartitionTableError("the partition table has no entries")
    seen: set[str] = set()
    last: Partition | None = None
    for p in ordered:
        if p.label in seen:
            raise PartitionTableError(f"partition label {p.label!r} appears twice")
        seen.add(p.label)
        if p.offset < TABLE_OFFSET + SECTOR:
            raise PartitionTableError(
                f"{p.label} at 0x{p.offset:x} overlaps the partition table at 0x{TABLE_OFFSET:x}"
            )
        if p.size <= 0 or (p.type == 0 and p.size % SECTOR):
            raise PartitionTableError(
                f"{p.label}: size 0x{p.size:x} must be positive"
                + (f" and a multiple of 0x{SECTOR:x} for an app" if p.type == 0 else "")
            )
        if p.type == 1 and p.subtype == DATA_SUBTYPES["ota"] and p.size != 2 * SECTOR:
            raise PartitionTableError(f"otadata {p.label} must be 0x2000 bytes, not 0x{p.size:x}")
        nvs = p.type == 1 and p.subtype == DATA_SUBTYPES["nvs"]
        if nvs and p.size < 3 * SECTOR and not p.flags & FLAGS["readonly"]:
            raise PartitionTableError(f"nvs {p.label} must be at least 0x3000 bytes")
        if p.offset % (APP_ALIGN if p.type == 0 else SECTOR):
            raise PartitionTableError(f"{p.label} at 0x{p.offset:x} is not aligned")
        if last is not None and p.offset < last.end:
            raise PartitionTableError(
                f"{p.label} at 0x{p.offset:x} overlaps {last.label} (ends at 0x{last.end:x})"
            )
        if flash_size is not None and p.end > flash_size:
            raise PartitionTableError(
                f"{p.label} ends at 0x{p.end:x}, past the 0x{flash_size:x}-byte flash"
            )
        last = p


def to_binary(parts: Iterable[Partition]) -> bytes:
    """The 0xC00-byte binary table, with its MD5 entry, ready to flash at 0x8000."""
    body = b"".join(
        ENTRY.pack(
            ENTRY_MAGIC, p.type, p.subtype, p.offset, p.size, p.label.encode(), p.flags
        )
        for p in parts
    )
    body += MD5_MAGIC + b"\xff" * 14 + hashlib.md5(body).digest()
    if len(body) > MAX_LENGTH:
        raise PartitionTableError(f"partition table is {len(body)} bytes, max is {MAX_LENGTH}")
    return body + b"\xff" * (MAX_LENGTH - len(body))


def from_binary(raw: bytes) -> list[Partition]:
    """Parse a binary table; checks the MD5 entry when present."""
    parts: list[Partition] = []
    for pos in range(0, len(raw) - ENTRY.size + 1, ENTRY.size):
        chunk = raw[pos : pos + ENTRY.size]
        if chunk[:2] == MD5_MAGIC:
            if chunk[16:] != hashlib.md5(raw[:pos]).digest():
                raise PartitionTableError(
                    "partition table MD5 does not match its entries: the table is corrupt"
                )
            return parts
        if chunk == b"\xff" * ENTRY.size:
            return parts
        magic, type_, subtype, offset, size, label, flags = ENTRY.unpack(chunk)
        if magic != ENTRY_MAGIC:
            raise PartitionTableError(
                f"entry {len(parts)} at +0x{pos:x} has magic {magic.hex()}, expected aa50"
            )
        name = label.split(b"\x00")[0].decode(errors="replace")
        parts.append(Partition(name, type_, subtype, offset, size, flags))
    raise PartitionTableError("partition table has no end marker (MD5 entry or 0xFF)")


def to_csv(parts: Iterable[Partition]) -> str:
    """A CSV that parses back to the same entries."""
    lines = ["# Name, Type, SubType, Offset, Size, Flags"]
    for p in parts:
        flags = ":".join(name for name, bit in FLAGS.items() if p.flags & bit)
        lines.append(
            f"{p.label}, {p.type_name}, {p.subtype_name}, 0x{p.offset:x}, 0x{p.size:x}, {flags}"
        )
    return "\n".join(lines) + "\n"


def load_csv(path: Path, flash_size: int | None = None) -> list[Partition]:
    try:
        text = path.read_text()
    except OSError as e:
        raise PartitionTableError(f"cannot read partition CSV {path}: {e.strerror}") from e
    return parse_csv(text, flash_size)
