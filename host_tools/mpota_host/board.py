"""Board definitions: ``<dir>/board.json`` plus its partition CSV (docs/boards.md).

A board is named (``esp32-s3-generic-8mb``: a directory of the definitions
shipped with mpota, :func:`mpota_host.resources.boards_dir`, or of one of the
directories listed in ``$MPOTA_BOARDS``) or given as a
directory holding a ``board.json``. :func:`load` takes either; :func:`require`
takes a name only (what a device registry or a release manifest stores) and
refuses an unknown one with the list of known names. Every fault of a
definition is refused when it is loaded, in one line naming the file, the
field and the fix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esptool.targets import CHIP_DEFS

from . import partition_table, resources
from .errors import BoardError, PartitionTableError

# Extra directories of board definitions, separated like PATH (os.pathsep).
BOARDS_ENV = "MPOTA_BOARDS"
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
MIB = 1024 * 1024
FLASH_SIZES = tuple(n * MIB for n in (1, 2, 4, 8, 16, 32, 64, 128))
DOWNLOAD_PAGE = "https://micropython.org/download/{board}/"

# field: (JSON type, required, what it is: used in messages)
FIELDS: dict[str, tuple[type, bool, str]] = {
    "name": (str, True, "the board's name, 1-32 characters of A-Z a-z 0-9 _ . -"),
    "chip": (str, True, "esptool's chip name (esp32, esp32s2, esp32s3, esp32c3, esp32c6...)"),
    "chip_id": (int, True, "the chip id in an app image's header (esp32 0, esp32s3 9...)"),
    "flash_size": (int, True, "the flash size in bytes (4194304 for 4 MiB)"),
    "slots": (list, True, 'the OTA app partitions, e.g. ["ota_0", "ota_1"]'),
    "partition_table": (str, False, "the partition CSV beside board.json"),
    "description": (str, False, "one line for people"),
    "bootloader_offset": (int, False, "where the chip's ROM loads the bootloader from"),
    "micropython_board": (str, False, "MicroPython's board name (ESP32_GENERIC_S3)"),
    "micropython_variant": (str, False, "MicroPython's variant of that board (OTA)"),
    "micropython_firmware": (str, False, "free text: which firmware to use"),
}


@dataclass(frozen=True)
class Board:
    """A board: its chip, flash size, partition layout and MicroPython firmware."""

    name: str
    chip: str
    chip_id: int
    flash_size: int
    slots: tuple[str, ...]
    partitions: tuple[partition_table.Partition, ...]
    directory: Path
    bootloader_offset: int = 0x1000
    description: str = ""
    micropython_board: str = ""
    micropython_variant: str = ""

    def partition(self, label: str) -> partition_table.Partition:
        for p in self.partitions:
            if p.label == label:
                return p
        raise BoardError(f"board {self.name} has no partition {label!r}")

    @property
    def initial_app(self) -> partition_table.Partition:
        """Where a freshly flashed board keeps its first app: factory, else ota_0."""
        apps = [p for p in self.partitions if p.type == 0]
        if not apps:
            raise BoardError(f"board {self.name} has no app partition")
        factory = [p for p in apps if p.subtype == 0x00]
        return factory[0] if factory else self.partition(self.slots[0]) if self.slots else apps[0]

    @property
    def slot_size(self) -> int:
        """The size of the smallest OTA slot: the largest image that fits every slot."""
        if not self.slots:
            raise BoardError(f"board {self.name} has no OTA slots (its slots list is empty): "
                             "it cannot take releases; use a board with ota_0 and ota_1")
        return min(self.partition(s).size for s in self.slots)

    def table_binary(self) -> bytes:
        return partition_table.to_binary(self.partitions)

    @property
    def build(self) -> str:
        """MicroPython's build name as micropython.org spells its files: BOARD[-VARIANT]."""
        if not self.micropython_board:
            return ""
        variant = f"-{self.micropython_variant}" if self.micropython_variant else ""
        return self.micropython_board + variant

    @property
    def ota_file(self) -> str:
        """The app-only image a release is made from, as a user finds it."""
        if self.build:
            return f"{self.build}-<date>-v<version>.app-bin"
        return "the .app-bin (app-only image; micropython.bin in a build directory)"

    @property
    def full_file(self) -> str:
        """The full image (bootloader, partition table, app) esptool flashes."""
        if self.build:
            return f"{self.build}-<date>-v<version>.bin"
        return "the .bin (full image; firmware.bin in a build directory)"

    @property
    def download_page(self) -> str:
        return DOWNLOAD_PAGE.format(board=self.micropython_board) if self.micropython_board else ""

    def firmware_hint(self) -> str:
        """One sentence: which files of MicroPython this board takes."""
        where = f" from {self.download_page}" if self.download_page else ""
        return (f"use {self.ota_file} (app-only image) for releases and {self.full_file} "
                f"(full image) for flashing{where}")


def search_path() -> list[Path]:
    """Where named boards are looked up: $MPOTA_BOARDS's directories, then the built-in ones."""
    extra = [Path(p) for p in os.environ.get(BOARDS_ENV, "").split(os.pathsep) if p]
    return [*extra, resources.boards_dir()]


def known() -> list[str]:
    """The names of every board definition on the search path, sorted."""
    names: set[str] = set()
    for root in search_path():
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if (p / "board.json").is_file())
    return sorted(names)


def _unknown(name: str) -> BoardError:
    return BoardError(f"unknown board {name!r}; known: {', '.join(known()) or '(none)'} "
                      "(or give a directory holding a board.json, or list its parent in "
                      f"${BOARDS_ENV})")


def _named(name: str) -> Path | None:
    if not NAME.fullmatch(name):
        return None
    for root in search_path():
        if (root / name / "board.json").is_file():
            return root / name
    return None


def require(name: str) -> Board:
    """The known board called ``name``; a name only, never a path.

    Raises:
        BoardError: "unknown board 'esp32-foo'; known: ..." or what is wrong
            with that board's definition.
    """
    directory = _named(name)
    if directory is None:
        raise _unknown(name)
    return load(directory)


def resolve(board: str | Path) -> Path:
    """A board directory from a path or a known board name."""
    path = Path(board)
    if (path / "board.json").is_file():
        return path
    named = _named(str(board))
    if named is not None:
        return named
    if path.is_dir() or os.sep in str(board) or "/" in str(board):
        raise BoardError(f"no board definition at {board} (no board.json); known boards: "
                         f"{', '.join(known()) or '(none)'}")
    raise _unknown(str(board))


def _field(where: Path, meta: dict[str, Any], key: str) -> Any:
    kind, _, what = FIELDS[key]
    value = meta[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BoardError(f"{where}: {key} must be a JSON {kind.__name__} ({what}), "
                         f"not {json.dumps(value)[:40]}")
    return value


def load(board: str | Path) -> Board:
    """Load and check a board definition (a known name or a directory)."""
    directory = resolve(board)
    where = directory / "board.json"
    try:
        meta = json.loads(where.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise BoardError(f"{where} cannot be read as JSON: {e}") from e
    if not isinstance(meta, dict):
        raise BoardError(f"{where} must hold a JSON object")
    return _check(where, meta)


def _check(where: Path, meta: dict[str, Any]) -> Board:
    missing = [k for k, (_, required, _) in FIELDS.items() if required and k not in meta]
    if missing:
        raise BoardError(f"{where} lacks {', '.join(missing)}: "
                         + "; ".join(f"{k} is {FIELDS[k][2]}" for k in missing))
    unknown = sorted(set(meta) - set(FIELDS))
    if unknown:
        raise BoardError(f"{where}: unknown field {', '.join(unknown)}; "
                         f"known: {', '.join(FIELDS)}")
    fields = {k: _field(where, meta, k) for k in meta}
    name = fields["name"]
    if not NAME.fullmatch(name):
        raise BoardError(f"{where}: name {name!r} must be {FIELDS['name'][2]}")
    chip = fields["chip"]
    target = CHIP_DEFS.get(chip)
    if target is None:
        raise BoardError(f"{where}: chip {chip!r} is not a chip esptool knows; "
                         f"known: {', '.join(sorted(CHIP_DEFS))}")
    if fields["chip_id"] != target.IMAGE_CHIP_ID:
        raise BoardError(f"{where}: chip_id {fields['chip_id']} is not {chip}'s; "
                         f"its images carry chip id {target.IMAGE_CHIP_ID}")
    boot = int(target.BOOTLOADER_FLASH_OFFSET)
    if fields.get("bootloader_offset", boot) != boot:
        raise BoardError(f"{where}: bootloader_offset 0x{fields['bootloader_offset']:x} is wrong: "
                         f"the {chip}'s ROM loads the bootloader from 0x{boot:x}")
    flash_size = fields["flash_size"]
    if flash_size not in FLASH_SIZES:
        raise BoardError(f"{where}: flash_size {flash_size} is not a flash chip's size; use one "
                         f"of {', '.join(str(s) for s in FLASH_SIZES)} (1 to 128 MiB)")
    csv_path = where.parent / fields.get("partition_table", "partitions.csv")
    try:
        parts = tuple(partition_table.load_csv(csv_path, flash_size))
    except PartitionTableError as e:
        raise BoardError(f"{csv_path}: {e}") from None
    slots = fields["slots"]
    labels_ok = all(isinstance(s, str) for s in slots) and len(set(slots)) == len(slots)
    if (slots and len(slots) < 2) or not labels_ok:
        raise BoardError(f"{where}: slots must list two or more different partition labels "
                         f'(e.g. ["ota_0", "ota_1"]; [] for a board without OTA), '
                         f"not {json.dumps(slots)[:60]}")
    labels = {p.label: p for p in parts}
    for slot in slots:
        if slot not in labels:
            raise BoardError(f"{where}: slot {slot!r} is not in {csv_path.name} (its partitions: "
                             f"{', '.join(labels)})")
        if not labels[slot].is_ota_slot:
            raise BoardError(f"{where}: slot {slot} is not an OTA app partition "
                             f"(type app, subtype ota_0..ota_15) in {csv_path.name}")
    has_otadata = any(p.type == 1 and p.subtype == partition_table.DATA_SUBTYPES["ota"]
                      for p in parts)
    if slots and not has_otadata:
        raise BoardError(f"{csv_path}: no otadata partition (data, ota, 0x2000 bytes): the "
                         "bootloader cannot switch slots without one")
    return Board(
        name=name,
        chip=chip,
        chip_id=fields["chip_id"],
        flash_size=flash_size,
        slots=tuple(slots),
        partitions=parts,
        directory=where.parent,
        bootloader_offset=boot,
        description=fields.get("description", ""),
        micropython_board=fields.get("micropython_board", ""),
        micropython_variant=fields.get("micropython_variant", ""),
    )
