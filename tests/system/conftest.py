"""Fixtures of the system tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.server.stop()


@pytest.fixture(params=["blocking", "asyncio"])
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The update, fault and power-cut tests run once per agent API: the
    blocking calls (mpota.poll(), update(), apply()) and the asyncio agent
    (poll_async(), update_async(), apply_async() beside a ticking application
    task: device/sim/simdriver.py), on the same simulated boards."""
    if request.param == "asyncio":
        monkeypatch.setenv("MPOTA_SIM_DRIVER", "asyncio")
    else:
        monkeypatch.delenv("MPOTA_SIM_DRIVER", raising=False)
    return str(request.param)
