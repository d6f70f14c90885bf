"""make demo tells its story (the same code, in a temporary directory)."""

from __future__ import annotations

from pathlib import Path

from mpota_host import demo


def test_demo_story_happens(tmp_path: Path) -> None:
    steps, history = demo.run(tmp_path / "demo")
    assert [s.title for s in steps if not s.ok] == []
    assert [r["state"] for r in history] == [
        "STAGED", "REBOOTING", "CONFIRMED",
        "STAGED", "REBOOTING", "FAILED", "ROLLED_BACK"]
    failed = next(r for r in history if r["state"] == "FAILED")
    assert failed["version_code"] == 300  # reported while v3 was on probation
