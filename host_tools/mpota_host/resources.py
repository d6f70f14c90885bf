"""Where mpota's own files are: the device agent, the simulator's modules, the
board definitions, and the cache of compiled ``.mpy`` files.

The repository keeps ``device/`` and ``boards/`` at its top; the package maps
them in as ``mpota_host._device`` and ``mpota_host._boards`` (setuptools
``package-dir``), so a wheel carries them inside ``mpota_host/`` and an
editable install resolves them to the checkout, live. This module is the one
place that knows it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from importlib import resources
from pathlib import Path

from . import __version__
from .errors import MpotaError

CACHE_ENV = "MPOTA_CACHE"
_CHECKOUT_NAMES = {"_device": "device", "_boards": "boards"}


class MissingResource(MpotaError):
    """A file mpota ships is not where the installation should have put it."""


def _package_dir(name: str) -> Path | None:
    """The directory of the data package ``mpota_host.<name>``, if installed."""
    package = resources.files("mpota_host")
    # a wheel: the data lives inside the mpota_host package
    inside = package / name
    if inside.is_dir():
        return Path(str(inside))
    # an editable install or a source tree (PYTHONPATH=host_tools): mpota_host is
    # host_tools/mpota_host of the checkout, and the data is the checkout's own
    # device/ and boards/, live (setuptools' editable finder does not map a
    # directory without __init__.py inside a package, so it is not asked)
    checkout = Path(str(package)).parent.parent
    candidate = checkout / _CHECKOUT_NAMES[name]
    if (checkout / "pyproject.toml").is_file() and candidate.is_dir():
        return candidate
    return None


def device_dir() -> Path:
    """The directory holding ``mpota/`` (the agent) and ``sim/`` (the simulator)."""
    found = _package_dir("_device")
    if found is None or not (found / "mpota" / "__init__.py").is_file():
        raise MissingResource(
            "the mpota device agent is not installed with these host tools (no "
            "mpota_host/_device/mpota): reinstall mpota ('pip install --force-reinstall mpota')")
    return found


def agent_dir() -> Path:
    """The agent's sources (the ``mpota`` package for the board)."""
    return device_dir() / "mpota"


def agent_sources() -> list[Path]:
    """Every source file of the agent, sorted; refuses an agent without its modules."""
    sources = sorted(agent_dir().glob("*.py"))
    if not sources:
        raise MissingResource(f"the mpota device agent in {agent_dir()} has no modules: "
                              "reinstall mpota ('pip install --force-reinstall mpota')")
    return sources


def agent_modules() -> tuple[str, ...]:
    """The agent's module names (``mpota``, ``mpota.agent``...)."""
    return tuple("mpota" if p.stem == "__init__" else f"mpota.{p.stem}"
                 for p in agent_sources())


def sim_dir() -> Path:
    """The simulated ESP32's MicroPython modules (esp32, machine, network...)."""
    found = device_dir() / "sim"
    if not (found / "simrun.py").is_file():
        raise MissingResource(f"the simulator's modules are missing from {found}: "
                              "reinstall mpota ('pip install --force-reinstall mpota')")
    return found


def boards_dir() -> Path:
    """The directory of the board definitions shipped with mpota (one per board)."""
    found = _package_dir("_boards")
    if found is None:
        raise MissingResource("mpota's board definitions are not installed (no "
                              "mpota_host/_boards): reinstall mpota "
                              "('pip install --force-reinstall mpota')")
    return found


def board_names() -> list[str]:
    """The names of the shipped boards, sorted."""
    return sorted(p.parent.name for p in boards_dir().glob("*/board.json"))


def _user_cache() -> Path:
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "mpota" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mpota"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base_dir = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base_dir / "mpota"


def cache_dir() -> Path:
    """mpota's cache directory: $MPOTA_CACHE, else the platform's user cache
    (XDG_CACHE_HOME or ~/.cache on Linux, ~/Library/Caches on macOS,
    %LOCALAPPDATA% on Windows), under ``mpota``."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else _user_cache()


def mpy_cache(compiler: str) -> Path:
    """Where ``.mpy`` files compiled by ``compiler`` (mpy-cross's version line)
    for this mpota version and this installation are kept: a new version of
    either, or another installation's sources, start afresh."""
    release = re.search(r"v(\d+\.\d+(?:\.\d+)?)", compiler)
    bytecode = re.search(r"mpy v(\d+\.\d+)", compiler)
    line = hashlib.sha256(compiler.encode()).hexdigest()[:8]
    key = (f"mpota-{__version__}_mpy-cross-{release.group(1) if release else 'unknown'}"
           f"_mpy-{bytecode.group(1) if bytecode else 'unknown'}_{line}_s")  # _s: -s names
    where = hashlib.sha256(str(device_dir().resolve()).encode()).hexdigest()[:12]
    return cache_dir() / key / where
