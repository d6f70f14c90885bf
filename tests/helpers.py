"""Running MicroPython snippets on a simulated board from tests."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from mpota_host.sim.harness import SimBoard
from mpota_host.sim.runner import Run

REPO = Path(__file__).resolve().parents[1]
BOARD_4MB = REPO / "boards" / "esp32-generic-4mb"
BOARD_8MB = REPO / "boards" / "esp32-generic-8mb"


def wycheproof(name: str) -> Path:
    """A Wycheproof test-vector file kept in tests/vectors/wycheproof (Apache-2.0,
    LICENSE beside them)."""
    path = REPO / "tests" / "vectors" / "wycheproof" / name
    assert path.is_file(), f"Wycheproof vectors missing: expected {path}"
    return path


def run_device(board: SimBoard, code: str, heapsize: str = "2M", timeout: float = 30.0) -> Run:
    """Run a MicroPython snippet on the board as the running firmware."""
    script = board.sim_dir / f"snippet{next(_snippets)}.py"
    script.write_text(textwrap.dedent(code))
    return board.run(script, heapsize=heapsize, timeout=timeout)


_snippets = itertools.count()


def results(run: Run) -> list[Any]:
    """Values the snippet printed as 'RESULT <json>' lines."""
    out = [json.loads(line[7:]) for line in run.output.splitlines() if line.startswith("RESULT ")]
    if not out:
        raise AssertionError(f"device printed no RESULT ({run.ended}):\n{run.output}")
    return out


# The prelude device snippets use: print a value as JSON, and an OSError as its args.
PRELUDE = """
import json
def result(v):
    print("RESULT " + json.dumps(v))
def err(f, *a):
    try:
        f(*a)
    except OSError as e:
        return list(e.args)
    except ValueError as e:
        return ["ValueError"] + list(e.args)
    return None
"""


def tool(name: str) -> str:
    """A console script of this environment (mpota, esptool...), found next to Python."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def run_unix(code: str, heapsize: str = "2M", timeout: float = 120.0) -> tuple[int, str]:
    """Run a snippet on the bare unix port with the compiled mpota package importable."""
    from mpota_host.sim import runner

    script = Path(tempfile.mkdtemp(prefix="mpota-unix-")) / "snippet.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, MICROPYPATH=str(runner.compiled_agent()) + ":.frozen")
    proc = subprocess.run(
        [runner.micropython_command(), "-X", f"heapsize={heapsize}", str(script)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def unix_results(code: str, heapsize: str = "2M") -> list[Any]:
    rc, out = run_unix(PRELUDE + code, heapsize)
    lines = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    if rc != 0 or not lines:
        raise AssertionError(f"unix port exited {rc}:\n{out}")
    return lines


# Fakes device unit tests share on the unix port: an esp32.Partition in RAM
# (4096-byte blocks, ioctl 6 erases) and a body that readinto() draws from.
RAM_FAKES = """
class Part:
    def __init__(self, blocks):
        self.mem = bytearray(b"\\xff" * (4096 * blocks))
        self.erases = 0
    def ioctl(self, cmd, arg):
        if cmd == 4:
            return len(self.mem) // 4096
        if cmd == 5:
            return 4096
        if cmd == 6:
            self.mem[arg * 4096:(arg + 1) * 4096] = b"\\xff" * 4096
            self.erases += 1
            return 0
    def info(self):
        return (0, 0x11, 0, len(self.mem), "ota_1", False)
    def readblocks(self, block, buf, offset=0):
        start = block * 4096 + offset
        buf[:] = self.mem[start:start + len(buf)]
    def writeblocks(self, block, buf, offset=None):
        start = block * 4096
        self.mem[start:start + len(buf)] = buf

class Body:
    def __init__(self, data):
        self.data = memoryview(data)
        self.pos = 0
    def readinto(self, mv):
        n = min(len(mv), len(self.data) - self.pos)
        mv[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n
"""


# What the asyncio agent's runs need beyond the blocking agent's heap: asyncio's
# own scheduler (~4 KiB, the application's when it is an asyncio application),
# the simulated application's ticking task (device/sim/simdriver.py, ~1.3 KiB),
# mpota.aio (~2.6 KiB as .mpy) and the tasks and generator frames of a round.
ASYNCIO_EXTRA_KIB = 16


def heap_for(driver: str, heap: str) -> str:
    """The heap of a small-heap test for the blocking or the asyncio agent."""
    if driver != "asyncio":
        return heap
    return f"{int(heap.rstrip('K')) + ASYNCIO_EXTRA_KIB}K"
