"""Flash MicroPython onto a board over USB with esptool's Python API (``mpota flash``).

:func:`plan_flash` decides what goes where and refuses what the board would not
boot; it needs no port, so it is tested without a device. :func:`flash_firmware`
runs that plan through esptool: it connects, checks the chip and the flash
size, writes, resets the board and closes the port.

Two kinds of firmware are accepted:

* MicroPython's full image of an OTA build (the ``.bin`` micropython.org offers,
  e.g. ``ESP32_GENERIC-OTA-<date>-v<version>.bin``; ``firmware.bin`` in a build
  directory): bootloader, partition table and app, written whole at the chip's
  bootloader offset (0x1000 on the ESP32 and ESP32-S2, 0x0 on the S3, C3, C6).
  Its partition table must be the board's.
* An app-only image (the ``.app-bin``; ``micropython.bin`` in a build
  directory): written into ota_0, with the board's partition table at 0x8000.
  The bootloader already on the board starts it.

Either way the otadata partition is erased, so the bootloader boots ota_0 and
not a slot that an earlier firmware selected.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from esptool.bin_image import LoadFirmwareImage
from esptool.cmds import (
    attach_flash,
    connect_esp,
    detect_flash_size,
    reset_chip,
    run_stub,
    write_flash,
)
from esptool.loader import ESPLoader
from esptool.util import FatalError, NotImplementedInROMError, flash_size_bytes
from rich.console import Console
from serial import SerialException

from . import board as boards
from .appimage import CHIP_NAMES, check_app_image, full_flash_offset
from .errors import (
    BoardError,
    BootloaderUnreachableError,
    FirmwareError,
    FlashError,
    FlashInterrupted,
    MpotaError,
    PartitionTableError,
)
from .firmware import APP_DESC, APP_DESC_MAGIC, IMAGE_MAGIC
from .partition_table import DATA_SUBTYPES, MAX_LENGTH, TABLE_OFFSET, Partition, from_binary
from .progress import esptool_progress

DEFAULT_BAUD = 460800


class FlashRegion(NamedTuple):
    """Bytes to write at one flash offset, and what they are (for the summary)."""

    offset: int
    data: bytes
    what: str


@dataclass(frozen=True)
class FlashReport:
    """What :func:`flash_firmware` found on the port and wrote where."""

    port: str
    board: str
    chip: str
    mac: str
    flash_size: str | None
    regions: tuple[tuple[int, int, str], ...]
    notes: tuple[str, ...] = ()

    def summary(self) -> list[str]:
        """Lines for people: the chip, then one line per written region, then notes."""
        flash = f", {self.flash_size} flash" if self.flash_size else ""
        lines = [f"flashed {self.board} on {self.port}: {self.chip}, MAC {self.mac}{flash}"]
        lines += [f"  0x{off:06x} {size:>9} bytes  {what}" for off, size, what in self.regions]
        return lines + [f"note: {note}" for note in self.notes]


def plan_flash(board: str | Path | boards.Board, firmware: Path) -> list[FlashRegion]:
    """What to write where to put ``firmware`` on ``board``, checked; no port needed.

    Args:
        board: A board name under boards/, a board directory, or a loaded Board.
        firmware: MicroPython's full-flash image of an OTA build, or an app-only image.

    Returns:
        The regions to write, sorted by offset and never overlapping. One of
        them always erases otadata.

    Raises:
        FirmwareError: The file is not a firmware image, is built for another
            chip, carries another partition table, or does not fit.
        BoardError: The board definition is missing or has no otadata partition.
    """
    layout = board if isinstance(board, boards.Board) else boards.load(board)
    firmware = Path(firmware)
    try:
        # Whole, not streamed: esptool's write_flash takes each region as bytes (and
        # compresses it whole); at most the flash size, on the host.
        data = firmware.read_bytes()
    except OSError as e:
        raise FirmwareError(f"cannot read firmware {firmware}: {e.strerror}") from e
    base = full_flash_offset(data[: TABLE_OFFSET + 0x1000])
    if base is not None:
        return _plan_full_image(layout, firmware, data, base)
    if not data or data[0] != IMAGE_MAGIC:
        first = f"0x{data[0]:02x}" if data else "nothing (empty file)"
        raise FirmwareError(
            f"{firmware} is not an ESP32 firmware image: its first byte is {first} (images "
            f"start with 0xe9) and it has no partition table at 0x{TABLE_OFFSET - 0x1000:x}. "
            f"Use {layout.full_file} (full image) or {layout.ota_file} (app-only image)."
        )
    slot = layout.initial_app
    facts = check_app_image(firmware, layout.chip_id, slot.size)
    otadata = _otadata(layout)
    regions = [
        FlashRegion(TABLE_OFFSET, layout.table_binary(), f"partition table of {layout.name}"),
        FlashRegion(otadata.offset, b"\xff" * otadata.size, _erased_otadata(layout)),
        FlashRegion(slot.offset, data, f"{slot.label}: app {facts.version or '(no version)'}"),
    ]
    return sorted(regions, key=lambda r: r.offset)


def flash_firmware(
    port: str,
    board: str | Path,
    firmware: Path,
    baud: int = DEFAULT_BAUD,
    *,
    before: str = "default-reset",
    after: str = "hard-reset",
    out: Console | None = None,
    progress: bool | None = None,
) -> FlashReport:
    """Check ``firmware`` against ``board``, then write it to the board on ``port``.

    Everything :func:`plan_flash` checks is checked before the port is opened.
    esptool's lines go to ``out`` (stdout by default) and its write progress is a
    bar with bytes, rate and time left, drawn only on a terminal unless
    ``progress`` says otherwise. The port is closed when this returns or raises.

    Args:
        port: Serial port (``/dev/ttyUSB0``, ``COM3``) or a pyserial URL (``socket://``).
        board: Board name under boards/ or a board directory.
        firmware: Full-flash image of an OTA build, or an app-only image.
        baud: Baud rate for writing; the bootloader is first reached at 115200.
        out: Where esptool's lines and the bar go.
        progress: Draw the bar (None: only when ``out`` is a terminal).
        before: esptool's reset before connecting (``default-reset``, ``no-reset``...).
        after: esptool's reset afterwards (``hard-reset`` boots the new firmware).

    Returns:
        The chip found and what was written where.

    Raises:
        FirmwareError, BoardError: As :func:`plan_flash`; nothing was written.
        BootloaderUnreachableError: No bootloader answered on the port (exit code 3).
        FlashError: The chip or flash size does not match the board, or esptool
            failed while writing.
        FlashInterrupted: Ctrl-C; the message says whether anything was written.
    """
    layout = boards.load(board)
    regions = plan_flash(layout, firmware)
    notes: list[str] = []
    boot_offset = layout.bootloader_offset
    if not any(r.offset <= boot_offset < r.offset + len(r.data) for r in regions):
        notes.append(
            "app-only image: the bootloader already on the board starts it. Rollback needs the "
            f"bootloader of a MicroPython build (all enable it): if unsure, flash "
            f"{layout.full_file} once with esptool at 0x{layout.bootloader_offset:x}."
        )
    if before == "default-reset" and is_pseudo_terminal(port):
        before = after = "no-reset"
        notes.append(
            f"{port} is a pseudo-terminal, without the DTR/RTS lines that reset a board into "
            "its bootloader: the board was already in it (as 'mpota sim bootloader' holds the "
            "simulated board) and starts the new firmware at its next reset"
        )
    labels = [f"0x{r.offset:06x} {r.what}" for r in regions]
    with esptool_progress(out, progress, labels):
        try:
            rom = _connect(port, min(ESPLoader.ESP_ROM_BAUD, baud), before)
        except KeyboardInterrupt:
            raise FlashInterrupted(
                f"flashing on {port} interrupted while connecting; nothing was written"
            ) from None
        with rom:
            return _write(rom, layout, regions, port, baud, after, notes)


def _write(
    rom: ESPLoader,
    layout: boards.Board,
    regions: list[FlashRegion],
    port: str,
    baud: int,
    after: str,
    notes: list[str],
) -> FlashReport:
    """Check the connected chip and its flash, then write ``regions`` and reset."""
    stage = "before writing; nothing was written"
    try:
        chip_id = getattr(rom, "IMAGE_CHIP_ID", None)
        if chip_id != layout.chip_id:
            raise FlashError(
                f"the board on {port} is an {rom.CHIP_NAME} (chip id {chip_id}), but board "
                f"{layout.name} is {layout.chip} (chip id {layout.chip_id}); choose the "
                "--board for this chip and flash the firmware built for it"
            )
        esp = run_stub(rom)
        if baud > ESPLoader.ESP_ROM_BAUD:
            try:
                esp.change_baud(baud)
            except NotImplementedInROMError:
                rom_baud = ESPLoader.ESP_ROM_BAUD
                notes.append(f"the bootloader cannot change baud rate: wrote at {rom_baud}")
        attach_flash(esp)
        flash_size = _check_flash_size(esp, layout, port)
        chip, mac = esp.get_chip_description(), _mac(esp)
        stage = "while writing; the board may not boot until the same command succeeds"
        write_flash(esp, [(r.offset, r.data) for r in regions])
        stage = "after writing, at the reset; press RESET to boot the new firmware"
        reset_chip(esp, after)
    except (FatalError, SerialException, OSError) as e:
        raise FlashError(f"flashing on {port} failed {stage}: {_one_line(e)}") from e
    except KeyboardInterrupt:
        raise FlashInterrupted(f"flashing on {port} interrupted {stage}") from None
    return FlashReport(
        port=port,
        board=layout.name,
        chip=chip,
        mac=mac,
        flash_size=flash_size,
        regions=tuple((r.offset, len(r.data), r.what) for r in regions),
        notes=tuple(notes),
    )


# planning a full-flash image


def _plan_full_image(
    layout: boards.Board, firmware: Path, data: bytes, base: int
) -> list[FlashRegion]:
    boot_offset = layout.bootloader_offset
    lead = boot_offset - base
    if lead < 0 or data[:lead].count(0xFF) != lead:
        raise FirmwareError(
            f"{firmware} is a full-flash image with data at 0x{base:x}, but the {layout.chip} of "
            f"board {layout.name} loads its bootloader from 0x{boot_offset:x}: the image is built "
            f"for another chip. Use {layout.full_file} for {layout.chip}."
        )
    data, base = data[lead:], boot_offset  # merged from 0: only erased flash comes before
    end = base + len(data)
    if end > layout.flash_size:
        raise FirmwareError(
            f"{firmware} ends at 0x{end:x}, past the 0x{layout.flash_size:x}-byte flash of board "
            f"{layout.name}; use the firmware built for this flash size"
        )
    _check_image_chip(f"the bootloader in {firmware}", data, layout)
    table = _embedded_table(firmware, data, base)
    if table != list(layout.partitions):
        raise FirmwareError(_table_mismatch(firmware, table, layout))
    slot = layout.initial_app
    version = _check_embedded_app(firmware, data, slot.offset - base, layout, slot)
    otadata = _otadata(layout)
    regions = [FlashRegion(otadata.offset, b"\xff" * otadata.size, _erased_otadata(layout))]
    for start, stop in ((base, min(otadata.offset, end)), (max(otadata.end, base), end)):
        if start < stop:
            what = _contents(layout, data, base, start, stop, version)
            regions.append(FlashRegion(start, data[start - base : stop - base], what))
    return sorted(regions, key=lambda r: r.offset)


def _embedded_table(firmware: Path, data: bytes, base: int) -> list[Partition]:
    at = TABLE_OFFSET - base
    try:
        return from_binary(data[at : at + MAX_LENGTH])
    except PartitionTableError as e:
        raise FirmwareError(
            f"{firmware}: the partition table at file offset 0x{at:x} is unreadable ({e}); "
            "the file is damaged or not a MicroPython full-flash image"
        ) from e


def _table_mismatch(firmware: Path, table: list[Partition], layout: boards.Board) -> str:
    if not any(p.is_ota_slot for p in table):
        return (
            f"{firmware}: this firmware's partition table has no ota_0/ota_1 "
            f"({_describe(table)}): it is not an OTA build and cannot be updated over the air. "
            + (f"Download {layout.full_file} instead." if layout.micropython_variant else
               f"Flash {layout.ota_file} (app-only) with --board {layout.name}: mpota "
               "writes this board's OTA partition table with it.")
        )
    matching = [b.name for b in _known_boards()  # the image's chip is the layout's here
                if list(b.partitions) == table and b.chip_id == layout.chip_id]
    hint = (
        f"it is the layout of board {matching[0]}: flash with --board {matching[0]}"
        if matching
        else "use the firmware built for this board's partitions.csv"
    )
    return (
        f"{firmware}: this firmware's partition table ({_describe(table)}) is not the one of "
        f"board {layout.name} ({_describe(layout.partitions)}); {hint}"
    )


def _check_embedded_app(
    firmware: Path, data: bytes, at: int, layout: boards.Board, slot: Partition
) -> str:
    """Check the app inside a full image as check_app_image checks a file; its version."""
    app = data[at:]
    where = f"the app in {firmware} (file offset 0x{at:x}, flash 0x{slot.offset:x})"
    _check_image_chip(where, app, layout)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            image = LoadFirmwareImage("esp32", app)
    except Exception as e:  # esptool raises FatalError, struct.error, RuntimeError...
        raise FirmwareError(f"{where} is not a valid app image: {e}") from e
    if image.checksum != image.calculate_checksum():
        raise FirmwareError(f"{where}: image checksum is wrong; the file is corrupt")
    if image.append_digest and image.stored_digest != image.calc_digest:
        raise FirmwareError(f"{where}: appended SHA-256 does not match; the file is corrupt")
    if len(app) > slot.size:
        raise FirmwareError(
            f"{where} is {len(app)} bytes but {slot.label} holds {slot.size} bytes "
            f"(0x{slot.size:x}); use a board with larger slots or a smaller firmware"
        )
    if len(app) >= 0x20 + APP_DESC.size:
        fields = APP_DESC.unpack_from(app, 0x20)
        if fields[0] == APP_DESC_MAGIC:
            return str(fields[3].split(b"\0")[0].decode(errors="replace"))
    return "(no version)"


def _check_image_chip(where: str, image: bytes, layout: boards.Board) -> None:
    if len(image) < 24 or image[0] != IMAGE_MAGIC:
        first = f"0x{image[0]:02x}" if image else "the end of the file"
        raise FirmwareError(
            f"{where} is missing: found {first} where an image (0xe9) must start; the file is "
            "cut short or not a MicroPython full-flash image"
        )
    chip_id = int.from_bytes(image[12:14], "little")  # extended header: chip id
    if chip_id != layout.chip_id:
        raise FirmwareError(
            f"{where} is built for {CHIP_NAMES.get(chip_id, f'chip id {chip_id}')} (chip id "
            f"{chip_id}); board {layout.name} is {layout.chip} (chip id {layout.chip_id}). "
            "Use the firmware built for this chip."
        )


def _contents(
    layout: boards.Board, data: bytes, base: int, start: int, stop: int, version: str
) -> str:
    """What a region of a full image holds, named by the board's layout."""
    names = []
    if start <= layout.bootloader_offset < stop:
        names.append("bootloader")
    if start <= TABLE_OFFSET < stop:
        names.append("partition table")
    for p in layout.partitions:
        lo, hi = max(p.offset, start), min(p.end, stop)
        if lo >= hi:
            continue
        if p == layout.initial_app:
            names.append(f"{p.label}: app {version}")
        elif data[lo - base : hi - base].count(0xFF) == hi - lo:
            names.append(f"{p.label} (erased)")
        else:
            names.append(p.label)
    return ", ".join(names)


# the board definition


def _erased_otadata(layout: boards.Board) -> str:
    return f"otadata (erased: the bootloader boots {layout.initial_app.label})"


def _otadata(layout: boards.Board) -> Partition:
    for p in layout.partitions:
        if p.type == 1 and p.subtype == DATA_SUBTYPES["ota"]:
            return p
    raise BoardError(
        f"board {layout.name} has no otadata partition (data, ota): add one of 0x2000 bytes"
    )


def _known_boards() -> list[boards.Board]:
    known = []
    for name in boards.known():
        try:
            known.append(boards.require(name))
        except MpotaError:
            continue  # a broken definition is no candidate; loading it names the fault
    return known


def _describe(parts: tuple[Partition, ...] | list[Partition]) -> str:
    return ", ".join(f"{p.label} 0x{p.offset:x}+0x{p.size:x}" for p in parts)


# the device


def _connect(port: str, baud: int, before: str) -> ESPLoader:
    try:
        return connect_esp(port=port, chip="auto", initial_baud=baud, before=before)
    except (FatalError, SerialException, OSError) as e:
        reason = _one_line(e).split(" Hint:")[0].rstrip(".")  # our own hint follows
        raise BootloaderUnreachableError(
            f"no ESP32 bootloader answered on {port}: {reason}. Check the port "
            "(ls /dev/ttyUSB* /dev/ttyACM*), that no other program holds it, and if the board "
            "does not enter its bootloader by itself, hold BOOT while pressing RESET"
        ) from e


def is_pseudo_terminal(port: str) -> bool:
    """Whether ``port`` is a pty (no modem lines: esptool cannot reset through it)."""
    try:
        info = os.stat(port)
    except (OSError, ValueError):
        return False  # a pyserial URL, or no such port: esptool says what is wrong
    if not stat.S_ISCHR(info.st_mode):
        return False
    real = os.path.realpath(port)
    return (real.startswith(("/dev/pts/", "/dev/ttys"))
            or (sys.platform.startswith("linux") and 136 <= os.major(info.st_rdev) <= 143))


def _check_flash_size(esp: ESPLoader, layout: boards.Board, port: str) -> str | None:
    detected = detect_flash_size(esp)
    name = str(detected) if detected else None
    size = flash_size_bytes(name) if name else None
    if size is not None and size < layout.flash_size:
        raise FlashError(
            f"the board on {port} has {name} of flash, but board {layout.name} needs "
            f"{layout.flash_size // (1024 * 1024)}MB; choose the --board for this flash size"
        )
    return name


def _mac(esp: ESPLoader) -> str:
    try:
        mac = esp.read_mac()
    except FatalError:
        return "unknown"  # some ROM loaders cannot read eFuses; the flash goes on
    return ":".join(f"{b:02x}" for b in mac) if mac else "unknown"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
