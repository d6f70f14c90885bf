"""Shared fixtures: firmware images, simulated boards, running device code."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import services
from helpers import BOARD_4MB, REPO
from mpota_host.firmware import write_image
from mpota_host.resources import CACHE_ENV
from mpota_host.sim.harness import SimBoard

# The compiled .mpy cache of the test runs stays in the checkout (.work/ is
# ignored by git), not in the user's cache; a test may point it elsewhere.
os.environ.setdefault(CACHE_ENV, str(REPO / ".work" / "mpy-cache"))


@pytest.fixture(scope="session")
def firmware_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("firmware")


@pytest.fixture(scope="session")
def firmware(firmware_dir: Path) -> Callable[..., Path]:
    """firmware(version, behaviour="healthy", size=64K) -> path of a cached image."""
    cache: dict[tuple[str, str, int], Path] = {}

    def make(version: str, behaviour: str = "healthy", size: int = 64 * 1024) -> Path:
        key = (version, behaviour, size)
        if key not in cache:
            path = firmware_dir / f"fw-{version}-{behaviour}-{size}.bin"
            write_image(path, version, behaviour, size)
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture
def new_board(tmp_path: Path, firmware: Callable[..., Path]) -> Callable[..., SimBoard]:
    """new_board(version="1.0.0", board=BOARD_4MB) -> a board with that firmware in ota_0."""
    counter = itertools.count()

    def make(version: str = "1.0.0", board: Path = BOARD_4MB, **kw: Any) -> SimBoard:
        flash = tmp_path / f"board{next(counter)}.flash"
        mac = bytes.fromhex("240ac4000001")
        return SimBoard.create(board, firmware(version, **kw), flash, mac=mac)

    return make


@pytest.fixture
def booted(new_board: Callable[..., SimBoard]) -> SimBoard:
    """A 4 MiB board with v1.0.0 that has booted once (and sits at the REPL)."""
    board = new_board()
    records = board.boot(max_boots=1)
    assert records[-1].ended == "repl"
    return board


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """List the services (nginx...) whose tests were skipped because they are missing."""
    lines = services.summary()
    if lines:
        terminalreporter.section("services not installed: their tests were skipped")
        for line in lines:
            terminalreporter.write_line(line)
