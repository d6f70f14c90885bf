"""make lint checks the agent against the ESP32 port's API (tests/stubcheck.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import stubcheck
from helpers import REPO


def test_the_agent_uses_only_what_the_esp32_port_has() -> None:
    assert stubcheck.check(REPO / "device" / "mpota") == []


def test_a_call_the_port_lacks_is_caught(tmp_path: Path) -> None:
    agent = tmp_path / "mpota"
    shutil.copytree(REPO / "device" / "mpota", agent)
    with (agent / "hw.py").open("a") as f:
        # CPython has both; MicroPython's time and machine.WDT do not
        f.write("\n\ndef _elapsed(wdt):\n    wdt.feed()\n    machine.WDT(timeout=1000).stop()\n"
                "    return time.monotonic()\n")
    (agent / "hw.py").write_text("import time\n" + (agent / "hw.py").read_text())
    problems = stubcheck.check(agent)
    assert any('"stop"' in p and "hw.py" in p for p in problems), problems
    assert any('"monotonic"' in p and "hw.py" in p for p in problems), problems
    assert len(problems) == 2, problems


def test_a_known_mismatch_that_is_gone_is_reported(tmp_path: Path) -> None:
    agent = tmp_path / "mpota"
    shutil.copytree(REPO / "device" / "mpota", agent)
    known = (*stubcheck.KNOWN, ("hw.py", "attr-defined", "no such finding", "a test"))
    problems = stubcheck.check(agent, known)
    assert problems == ["tests/stubcheck.py: KNOWN entry for hw.py (no such finding) is no "
                        "longer found: remove it"]
