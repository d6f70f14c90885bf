"""The simulated board on a serial line: a pseudo-terminal that mpremote,
esptool-style tools or a terminal program open like a USB serial port.

Behind the pty the board runs as on a real ESP32: boot log, boot.py, main.py,
then the MicroPython REPL (friendly, raw and raw-paste, device/sim/simrepl.py).
The bridge here moves bytes between the pty and the board process at the
line's baud rate (8N1: ten bit times per byte), turns Ctrl-C into the
interrupt the UART raises on a board, restarts the board after resets (hard
ones through the bootloader, soft ones not), enforces the watchdog, and can
pull the cable out and plug it back in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import threading
import time
import tty
from collections.abc import Callable

from ..errors import SimulatorError
from . import runner
from .harness import ENDINGS, HARD_RESET, PWRON_RESET, SOFT_RESET, SimBoard

_CTRL_C = 0x03
_TIOCSPTLCK = 0x40045431  # Linux ioctls for unlockpt / ptsname
_TIOCGPTN = 0x80045430


def _open_pty() -> tuple[int, int]:
    """A pty pair opened with O_NOCTTY: os.openpty() may make the slave the
    controlling terminal of this process, and closing it would then SIGHUP us."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))  # unlockpt
        number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
        slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        os.close(master)
        raise
    return master, slave


def _catches_sigint(pid: int) -> bool:
    """Whether the process has a SIGINT handler (MicroPython installs one while it
    runs Python code; before that SIGINT would kill it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass  # the process is gone
    return False


def hold(board: SimBoard, what: str) -> int:
    """Claim the board for one program at a time: a board runs on its serial line or
    waits in its ROM bootloader, never both (an flock on FLASH.sim/in-use, released
    when the returned descriptor is closed, or the program ends).

    Raises:
        SimulatorError: Another mpota sim command holds the board.
    """
    path = board.sim_dir / "in-use"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        try:
            holder = path.read_text().strip() or "another program"
        except OSError:
            holder = "another program"
        raise SimulatorError(
            f"{board.flash} is in use ({holder}); stop that command first: a board runs on "
            "its serial line or waits in its bootloader, not both"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{what}, pid {os.getpid()}".encode())
    return fd


def release(fd: int) -> None:
    """Give up a board claimed with :func:`hold`."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


class SerialBoard:
    """A SimBoard behind a pty. ``port`` is the path to open (e.g. /dev/pts/7)."""

    def __init__(self, board: SimBoard, baud: int | None = 115200,
                 heapsize: str = runner.DEFAULT_HEAP, frozen: tuple[str, ...] = (),
                 log: Callable[[str], None] | None = None) -> None:
        self._held = hold(board, "mpota sim serial")
        self.board = board
        self.baud = baud
        self.heapsize = heapsize
        self.frozen = frozen
        self.log = log
        self.boots: list[str] = []  # how each board process ended
        self.at_prompt = threading.Event()  # the REPL of the current boot is up
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._master = -1
        self._slave = -1
        self.port = ""
        self._plug()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        self._from_host = threading.Thread(target=self._host_to_board, daemon=True)
        self._from_host.start()

    # the cable

    def _plug(self) -> None:
        master, slave = _open_pty()
        tty.setraw(slave)
        self._master, self._slave = master, slave  # we keep the slave open: no EIO
        self.port = os.ttyname(slave)

    def unplug(self) -> None:
        """Pull the cable: the host side sees its port vanish; the board runs on."""
        with self._lock:
            for fd in (self._master, self._slave):
                if fd >= 0:
                    os.close(fd)
            self._master = self._slave = -1
            self.port = ""

    def replug(self) -> str:
        """Plug the cable back in; returns the (new) port path."""
        with self._lock:
            if self._master < 0:
                self._plug()
            return self.port

    # pacing

    def _pace(self, nbytes: int, since: float) -> None:
        if self.baud:
            due = since + nbytes * 10 / self.baud
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    # board processes

    def _start(self, cause: int, soft: bool, raw: bool) -> subprocess.Popen[bytes]:
        env = {"MPOTA_SIM_RESET_CAUSE": str(cause), "MPOTA_SIM_SERIAL": "1"}
        if soft:
            env["MPOTA_SIM_SOFT"] = "1"
        else:
            (self.board.sim_dir / "wdt").unlink(missing_ok=True)
            (self.board.sim_dir / "boot.json").unlink(missing_ok=True)
        if raw:
            env["MPOTA_SIM_RAW"] = "1"
        (self.board.sim_dir / "exit").unlink(missing_ok=True)
        (self.board.sim_dir / "serial-ready").unlink(missing_ok=True)
        self.at_prompt.clear()
        cmd, full_env = runner.command(self.board.flash, "simboot", env=env,
                                       heapsize=self.heapsize, frozen=self.frozen)
        return subprocess.Popen(cmd, cwd=self.board.fs, env=full_env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)

    def _supervise(self) -> None:
        cause, soft, raw = PWRON_RESET, False, False
        while not self._stop.is_set():
            proc = self._start(cause, soft, raw)
            with self._lock:
                self._proc = proc
            out = threading.Thread(target=self._board_to_host, args=(proc,), daemon=True)
            out.start()
            ended = self._watch(proc)
            out.join(timeout=2)
            self.boots.append(ended)
            if self.log:
                self.log(f"board: {ended}")
            if self._stop.is_set() or ended in ("serial-closed", "no-app", "repl"):
                return
            kind = ended.split(" ")[0]
            cause, _ = ENDINGS.get(kind, (HARD_RESET, True))
            soft = kind == "soft-reset"
            raw = soft and ended.endswith("raw")
            if soft:
                cause = SOFT_RESET

    def _watch(self, proc: subprocess.Popen[bytes]) -> str:
        wdt = self.board.sim_dir / "wdt"
        while proc.poll() is None:
            if self._stop.wait(0.02):
                proc.kill()
                proc.wait()
                return "stopped"
            deadline = runner.read_deadline(wdt)
            if deadline is not None and time.time_ns() > deadline:
                proc.kill()
                proc.wait()
                return "wdt"
        try:
            return (self.board.sim_dir / "exit").read_text().strip()
        except OSError:
            return f"exit:{proc.returncode}"

    def _board_to_host(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        previous = b""
        while True:
            try:
                data = os.read(proc.stdout.fileno(), 4096)
            except OSError:
                return
            if not data:
                return
            # the UART REPL sends "\r\n" for every "\n" a program prints
            cooked = bytearray()
            for byte in data:
                if byte == 10 and previous != b"\r":
                    cooked += b"\r"
                cooked.append(byte)
                previous = bytes([byte])
            if b">>> " in cooked or b"raw REPL" in cooked:
                self.at_prompt.set()
            self._write_host(bytes(cooked))

    def _write_host(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            chunk = data[pos : pos + 64]
            start = time.monotonic()
            with self._lock:
                master = self._master
            if master < 0:
                return  # no cable: what the board sends is lost
            try:
                os.write(master, chunk)
            except OSError:
                return
            self._pace(len(chunk), start)
            pos += len(chunk)

    def _host_to_board(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                master = self._master
            if master < 0:
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(master, 64)
            except OSError:
                time.sleep(0.02)
                continue
            start = time.monotonic()
            self._to_board(data)
            self._pace(len(data), start)

    def _to_board(self, data: bytes) -> None:
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None or proc.stdin is None:
            return  # the board is rebooting: bytes on the wire are lost
        ready = (self.board.sim_dir / "serial-ready").exists()
        if not ready or not _catches_sigint(proc.pid):
            # still booting: Ctrl-C cannot interrupt the bootloader, and the REPL
            # reads the byte itself later
            with contextlib.suppress(OSError):  # it may just have died: a reset
                proc.stdin.write(data)
            return
        parts = data.split(bytes([_CTRL_C]))
        for i, part in enumerate(parts):
            if part:
                try:
                    proc.stdin.write(part)
                except OSError:
                    return
            if i < len(parts) - 1:
                proc.send_signal(signal.SIGINT)  # the UART's interrupt character

    def wait_for_repl(self, timeout: float = 30) -> None:
        """Wait until the board has booted to its REPL (as a technician waits after
        plugging a board in)."""
        if not self.at_prompt.wait(timeout):
            raise SimulatorError(f"the board did not reach its REPL in {timeout:.0f} s")

    def stop(self) -> None:
        self._stop.set()
        self._supervisor.join(timeout=5)
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.unplug()
        release(self._held)
        self._held = -1

    def __enter__(self) -> SerialBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise SimulatorError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
