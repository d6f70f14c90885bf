"""One raw-REPL session with a board on a serial port, through mpremote's
transport used as a library.

Every wait is bounded (``timeout``: the longest the board may stay silent);
a port that is absent, busy or silent ends in one :class:`BoardUnreachable`
line (exit code 3). Entering the raw REPL interrupts whatever the board was
running; when that was an application (its ``KeyboardInterrupt`` shows up),
:meth:`BoardLink.close` restarts it with a soft reset, so a technician's
command leaves the board as it found it.

The board answers in lines: ``MPOTA-JSON {...}`` (a call's value) and
``MPOTA-EVENT {...}`` (something the host waits for: ``progress``,
``rebooting``, ``result``; printed by ``mpota.push.announce``). Sentences
for people are shown, never parsed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import serial
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from .errors import MpotaError, printable

DEFAULT_TIMEOUT = 30.0
JSON_MARK = "MPOTA-JSON "
EVENT_MARK = "MPOTA-EVENT "
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"  # the ">" after it is exec's prompt


class BoardLinkError(MpotaError):
    """The board answered with an error (the agent's own reason, one line)."""


class BoardUnreachable(BoardLinkError):
    """The port is absent or busy, the board does not answer, or it went away."""

    exit_code = 3


class NoAgentError(BoardLinkError):
    """The board has no mpota agent (run mpota provision)."""


class VersionMismatch(BoardLinkError):
    """The board's MicroPython reads another bytecode version than mpy-cross writes."""


class Interrupted(MpotaError):
    """Ctrl-C: the message says what state the board is in and what resumes."""

    exit_code = 130


class Deferred:
    """Ctrl-C noted, not raised (see :func:`deferred_interrupt`)."""

    def __init__(self) -> None:
        self.requested = False


_deferring: list[Deferred] = []


@contextmanager
def deferred_interrupt() -> Iterator[Deferred]:
    """Within the block, Ctrl-C only sets ``requested``: code half-sent to the
    board would leave its REPL waiting for the rest. The caller stops at the
    next safe point. Outside the main thread there is nothing to defer."""
    if _deferring:  # an outer block stops at its own safe point
        yield _deferring[-1]
        return
    flag = Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def note(signum: int, frame: object) -> None:
        flag.requested = True

    previous = signal.signal(signal.SIGINT, note)
    _deferring.append(flag)
    try:
        yield flag
    finally:
        _deferring.pop()
        signal.signal(signal.SIGINT, previous)


class _Rebooting(Exception):
    """The board announced a reset: its raw REPL session is over."""


def _why_unopenable(port: str, error: Exception) -> str:
    """One sentence: why ``port`` cannot be opened, and what to do."""
    if "://" not in port and os.name != "nt" and not os.path.exists(port):
        return (f"no serial port {port}: plug the board in and check the name "
                "(ls /dev/ttyUSB* /dev/ttyACM* /dev/cu.*)")
    detail = str(error)
    try:
        probe = serial.serial_for_url(port, exclusive=True, timeout=0)
        probe.close()
    except (OSError, ValueError) as e:
        detail = str(e)
        if "lock" in detail.lower() or "busy" in detail.lower():
            return (f"serial port {port} is busy: another program (a terminal, Thonny, "
                    "screen, mpremote) holds it; close it and retry")
        if "ermission" in detail:
            return (f"no permission to open {port}: add yourself to the 'dialout' group "
                    "(Linux) and log in again")
    return f"cannot open serial port {port} ({printable(detail)}): check the cable and the name"


def _no_agent(problem: str) -> None:
    """A NoAgentError when the board's error is a missing agent (or agent module)."""
    if "no module named 'mpota'" in problem:
        raise NoAgentError("the board has no mpota agent: run 'mpota provision' first")
    if "no module named 'mpota." in problem:
        raise NoAgentError("the board's mpota agent is older than these tools (a module is "
                           "missing): run 'mpota provision' to update it")


def board_error_line(out: str, err: str) -> str:
    """The board's failure as one line: the agent's own last ``mpota:`` line when
    it printed one (it names the failure's code), else the exception's text."""
    said = [ln.strip()[len("mpota: "):] for ln in out.splitlines()
            if ln.strip().startswith("mpota: ") and "FAILED" in ln]
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    last = lines[-1] if lines else "an error without a message"
    name, sep, text = last.partition(": ")
    reason = text if sep and name.replace(".", "").isidentifier() else last
    if said and reason not in said[-1]:
        reason = f"{said[-1]}: {reason}"
    elif said:
        reason = said[-1]
    return printable(reason)


class BoardLink:
    """A raw-REPL session with one board; use :func:`connect`."""

    def __init__(self, port: str, baud: int = 115200,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.port = port
        self.timeout = timeout
        self.app_was_running = False
        self.rebooted = False  # the board reset itself: no session to leave
        self.restarted = False  # close() soft-reset the board to restart its application
        try:
            self.transport = SerialTransport(port, baudrate=baud, timeout=timeout)
        except (TransportError, OSError) as e:
            raise BoardUnreachable(_why_unopenable(port, e)) from e
        try:
            self._enter_raw_repl()
        except BaseException:
            with suppress(OSError, TransportError):
                self.transport.close()
            raise

    def _enter_raw_repl(self) -> None:
        """Interrupt what runs (noting whether it was an application) and enter
        the raw REPL, within the timeout."""
        ser = self.transport.serial
        try:
            ser.reset_input_buffer()  # what the board printed before we came
            ser.write(b"\r\x03")
            time.sleep(0.1)
            ser.write(b"\r\x01")
            seen = self.transport.read_until(1, _RAW_BANNER, timeout=self.timeout,
                                             timeout_overall=self.timeout)
        except (OSError, TransportError) as e:
            raise BoardUnreachable(f"lost the board on {self.port}: {e}; check the cable "
                                   "and run the command again") from e
        if not seen.endswith(_RAW_BANNER):
            raise BoardUnreachable(
                f"no MicroPython REPL answers on {self.port} within {self.timeout:g} s: check "
                "that the board is powered, runs MicroPython and talks at --baud (press its "
                "reset button), or give it longer with --timeout")
        self.app_was_running = b"KeyboardInterrupt" in seen
        self.transport.in_raw_repl = True

    def close(self) -> None:
        """Leave the raw REPL; restart the application it interrupted (soft reset)."""
        try:
            if not self.rebooted:
                self.transport.exit_raw_repl()
                if self.app_was_running:
                    self.transport.serial.write(b"\x04")  # soft reset: boot.py, main.py
                    self.transport.read_until(1, b"soft reboot", timeout=self.timeout,
                                              timeout_overall=self.timeout)
                    self.restarted = True
            self.transport.close()
        except (OSError, TransportError):
            pass  # the cable may already be gone

    def _lost(self, e: Exception) -> BoardUnreachable:
        if isinstance(e, TransportError) and "timeout" in str(e):
            return BoardUnreachable(f"the board on {self.port} went silent for "
                                    f"{self.timeout:g} s: run the command again (or give it "
                                    "longer with --timeout); 'mpota status' shows its state")
        return BoardUnreachable(f"lost the board on {self.port}: {e}; check the cable and run "
                                "the command again")

    def _send(self, code: str) -> None:
        """The code to the board whole: a Ctrl-C meanwhile is raised once it is sent
        (the board then runs it, and the caller interrupts it if it must)."""
        outer = bool(_deferring)
        with deferred_interrupt() as stop:
            self.transport.exec_raw_no_follow(code)
        if stop.requested and not outer:
            self.interrupt()
            raise KeyboardInterrupt

    def exec(self, code: str, timeout: float | None = None,
             stream: Callable[[bytes], None] | None = None) -> str:
        """Run code on the board; its printed output. A failure on the board is a
        :class:`BoardLinkError` with the board's reason in one line."""
        try:
            self._send(code)
            out, err = self.transport.follow(timeout or self.timeout, stream)
        except (TransportError, OSError) as e:
            raise self._lost(e) from e
        text = str(out.decode(errors="replace"))
        if err:
            problem = err.decode(errors="replace")
            _no_agent(problem)
            raise BoardLinkError(board_error_line(text, problem))
        return text

    def call(self, code: str, timeout: float | None = None) -> Any:
        """Run code that prints one MPOTA-JSON line; the parsed value."""
        out = self.exec(code, timeout)
        for line in out.splitlines():
            if line.startswith(JSON_MARK):
                return json.loads(line[len(JSON_MARK):])
        raise BoardLinkError(f"the board did not answer as expected: "
                             f"{printable(out.strip()[-200:]) or '(nothing)'}")

    def run_events(self, code: str, on_event: Callable[[dict[str, Any]], None],
                   out: Callable[[str], None]) -> None:
        """Run code whose end may be a reset of the board. Its MPOTA-EVENT lines go
        to on_event, the others to out; returns after the code ended or after a
        ``rebooting`` event (the reset ends the raw REPL session)."""
        buffer = bytearray()
        said: list[str] = []

        def consume(data: bytes) -> None:
            buffer.extend(data)
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                text = line.decode(errors="replace").rstrip("\r").lstrip("\x04")
                if text.startswith(EVENT_MARK):
                    try:
                        event = json.loads(text[len(EVENT_MARK):])
                    except ValueError:
                        continue  # a line the UART garbled: the next event carries on
                    on_event(event)
                    if event.get("event") == "rebooting":
                        raise _Rebooting
                elif text.strip():
                    said.append(text)
                    out(printable(text))

        try:
            self._send(code)
            _, err = self.transport.follow(self.timeout, consume)
        except _Rebooting:
            self.rebooted = True
            return
        except (TransportError, OSError) as e:
            raise self._lost(e) from e
        if err:
            problem = err.decode(errors="replace")
            _no_agent(problem)
            raise BoardLinkError(board_error_line("\n".join(said), problem))

    def interrupt(self) -> None:
        """Ctrl-C to the code running on the board; what it prints while it stops
        is read and dropped (bounded)."""
        with suppress(OSError, TransportError):
            self.transport.serial.write(b"\r\x03")
            self.transport.follow(min(self.timeout, 10))


@contextmanager
def connect(port: str, baud: int = 115200,
            timeout: float = DEFAULT_TIMEOUT) -> Iterator[BoardLink]:
    """A :class:`BoardLink` that is closed (and the application restarted) on exit."""
    link = BoardLink(port, baud, timeout)
    try:
        yield link
    finally:
        link.close()
