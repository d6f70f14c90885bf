"""make demo tells its story (the same code, in a temporary directory)."""

from __future__ import annotations

from pathlib import Path

from mpota_host import demo


def test_demo_story_happens(tmp_path: Path) -> None:
    steps, history = demo.run(tmp_path / "demo")
    assert [s.title for s in steps if not s.ok] == []
    # v3's network never comes up: its FAILED cannot reach the server; v2, rolled
    # back to, reports ROLLED_BACK with the reason
    assert [r["state"] for r in history] == [
        "STAGED", "REBOOTING", "CONFIRMED",
        "STAGED", "REBOOTING", "ROLLED_BACK"]
    rolled = history[-1]
    assert (rolled["version_code"], rolled["target_version_code"]) == (200, 300)
    assert "health check failed" in rolled["detail"]


def test_ctrl_c_during_the_demo_is_one_line_and_130(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "mpota_host.demo"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        if line.startswith("== 2."):  # the server is up, the board is being made
            break
    proc.send_signal(signal.SIGINT)
    proc.stdout.read()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("mpota demo: interrupted; the server is stopped") and "make demo" in err
