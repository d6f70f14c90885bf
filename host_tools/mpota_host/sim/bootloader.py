"""The simulated board held in its ROM bootloader (download mode), for ``mpota flash``.

A real ESP32 enters its ROM bootloader when BOOT is held at reset (or when
esptool pulses DTR/RTS through a USB-serial bridge). A pseudo-terminal has no
DTR/RTS a program could watch, so the simulated board cannot be reset into its
bootloader by esptool. Instead ``mpota sim bootloader`` plays the board *in*
download mode: the mock ESP32 ROM bootloader of the esp32-mock-bootloader package
(its SLIP protocol handler, stub loader included) answers on a pty, in front of
the board's own flash file. What esptool writes lands in that file; afterwards
``mpota sim serial`` or ``mpota sim boot`` powers the board on from it.

The mock reports the board's chip and flash size; the MAC esptool prints is the
mock's synthetic one, not the simulated board's.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from esp32_mock_bootloader import protocol
from esp32_mock_bootloader.server import (
    BootloaderConnection,
    FlashImage,
    PtyMasterTransport,
    handle_client,
)

from .. import board as boards
from ..errors import SimulatorError
from .harness import SimBoard
from .serial import _open_pty, hold, release

_JEDEC_LOW = 0x4020  # the mock's manufacturer and memory type bytes
_SECTOR = 0x1000


def _flash_id(size: int) -> int:
    """A JEDEC id whose capacity byte says ``size`` (a power of two), as esptool reads it."""
    return ((size.bit_length() - 1) << 16) | _JEDEC_LOW


class FileFlash(FlashImage):  # type: ignore[misc]  # esp32-mock-bootloader is untyped
    """The mock bootloader's flash, mapped onto the simulated board's flash file:
    every write and erase goes straight into the file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = path.open("r+b")
        self.data = mmap.mmap(self._file.fileno(), 0)
        self.written: list[tuple[int, int]] = []  # (offset, bytes) of each write since taken
        self._start = 0

    def _erase_for(self, payload: bytes) -> None:
        """FLASH_(DEFL_)BEGIN erases the sectors the write covers, as the chip does."""
        if len(payload) >= 16:
            size, _, _, offset = struct.unpack_from("<IIII", payload, 0)
            end = -(-(offset + size) // _SECTOR) * _SECTOR
            self.erase_region(offset - offset % _SECTOR, end - (offset - offset % _SECTOR))

    def begin_defl(self, payload: bytes) -> None:
        self._erase_for(payload)
        super().begin_defl(payload)
        self._start = self._defl_offset

    def write_defl_block(self, payload: bytes) -> None:
        before = self._defl_offset
        super().write_defl_block(payload)
        self._note(before, self._defl_offset)

    def begin_plain(self, payload: bytes) -> None:
        self._erase_for(payload)
        super().begin_plain(payload)
        self._start = self._plain_offset

    def write_plain_block(self, payload: bytes) -> None:
        before = self._plain_offset
        super().write_plain_block(payload)
        self._note(before, self._plain_offset)

    def _note(self, before: int, after: int) -> None:
        if after <= before:
            return
        if self.written and self.written[-1][0] == self._start:
            self.written[-1] = (self._start, self.written[-1][1] + after - before)
        else:
            self.written.append((self._start, after - before))

    def take_written(self) -> list[tuple[int, int]]:
        self.data.flush()
        written, self.written = self.written, []
        return written

    def close(self) -> None:
        self.data.flush()
        self.data.close()
        self._file.close()


class SimBootloader:
    """A simulated board in download mode on a pty: ``port`` is the path to flash.

    Use as a context manager, or ``start()`` / ``stop()``. ``on_session`` is called
    with the regions written after each esptool session (connect .. reset)."""

    def __init__(self, board: SimBoard,
                 on_session: Callable[[list[tuple[int, int]]], None] | None = None) -> None:
        self.board = board
        self._held = hold(board, "mpota sim bootloader")
        try:
            self._setup(board, on_session)
        except BaseException:
            release(self._held)
            raise

    def _setup(self, board: SimBoard,
               on_session: Callable[[list[tuple[int, int]]], None] | None) -> None:
        layout = boards.require(str(board.identity["board"]))
        self.chip = layout.chip
        size = board.flash.stat().st_size
        if size != layout.flash_size:
            raise SimulatorError(
                f"{board.flash} is {size} bytes, board {layout.name} has {layout.flash_size}: "
                "the flash file is damaged; create the board again with mpota sim new"
            )
        self.flash = FileFlash(board.flash)
        self.on_session = on_session
        master, slave = _open_pty()
        tty.setraw(slave)
        self._pty = PtyMasterTransport(master, slave)
        self.port = os.ttyname(slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.sessions = 0
        self.error: BaseException | None = None
        # esptool reads the flash size from the JEDEC id; the mock's default says 4 MB
        protocol.MOCK_FLASH_ID = _flash_id(layout.flash_size)

    def start(self) -> SimBootloader:
        self._thread.start()
        return self

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                handle_client(BootloaderConnection(pty=self._pty), self._stop, self.chip,
                              flash=self.flash)
                written = self.flash.take_written()
                if written:
                    self.sessions += 1
                    if self.on_session:
                        self.on_session(written)
        except BaseException as e:  # reported by wait()/stop(), never lost in a thread
            self.error = e

    def wait(self, sessions: int = 1, timeout: float = 60) -> bool:
        """Wait until ``sessions`` esptool sessions have written something; False when
        ``timeout`` seconds pass first or the bootloader stopped."""
        deadline = time.monotonic() + timeout
        while self.sessions < sessions and self._thread.is_alive():
            if time.monotonic() > deadline:
                return False
            self._stop.wait(0.1)
        return self.sessions >= sessions

    def stop(self) -> None:
        if self._held < 0:
            return  # stopped already
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._pty.close()
        self.flash.close()
        release(self._held)
        self._held = -1

    def __enter__(self) -> SimBootloader:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
