"""Board definitions: ``boards/<name>/board.json`` plus its partition CSV."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import partition_table
from .errors import BoardError

REQUIRED = ("name", "chip", "chip_id", "flash_size", "slots")
BOARDS_DIR = Path(__file__).resolve().parents[2] / "boards"


@dataclass(frozen=True)
class Board:
    """A board: its chip, flash size and partition layout."""

    name: str
    chip: str
    chip_id: int
    flash_size: int
    slots: tuple[str, ...]
    partitions: tuple[partition_table.Partition, ...]
    directory: Path

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
        return min(self.partition(s).size for s in self.slots)

    def table_binary(self) -> bytes:
        return partition_table.to_binary(self.partitions)


def resolve(board: str | Path) -> Path:
    """A board directory from a path or a name under boards/."""
    path = Path(board)
    if (path / "board.json").is_file():
        return path
    named = BOARDS_DIR / str(board)
    if (named / "board.json").is_file():
        return named
    known = ", ".join(sorted(p.name for p in BOARDS_DIR.glob("*") if (p / "board.json").is_file()))
    raise BoardError(f"no board definition at {board} (no board.json); known boards: {known}")


def load(board: str | Path) -> Board:
    """Load and check a board definition."""
    directory = resolve(board)
    where = directory / "board.json"
    try:
        meta = json.loads(where.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise BoardError(f"{where} cannot be read as JSON: {e}") from e
    if not isinstance(meta, dict):
        raise BoardError(f"{where} must hold a JSON object")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise BoardError(f"{where} lacks {', '.join(missing)}")
    try:
        csv_path = directory / str(meta.get("partition_table", "partitions.csv"))
        parts = partition_table.load_csv(csv_path, int(meta["flash_size"]))
        result = Board(
            name=str(meta["name"]),
            chip=str(meta["chip"]),
            chip_id=int(meta["chip_id"]),
            flash_size=int(meta["flash_size"]),
            slots=tuple(str(slot) for slot in meta["slots"]),
            partitions=tuple(parts),
            directory=directory,
        )
    except (TypeError, ValueError) as e:
        raise BoardError(f"{where}: a field has the wrong type or value ({e})") from e
    for slot in result.slots:
        if not result.partition(slot).is_ota_slot:
            raise BoardError(f"board {result.name}: slot {slot} is not an OTA app partition")
    return result
