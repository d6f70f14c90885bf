"""The reboot policy (pure, on the unix port): busy, deferred reboot, maintenance window.

decide() returns a code the agent acts on; explain() the words for people."""

from __future__ import annotations

import calendar
import time

from helpers import unix_results

NOON = calendar.timegm(time.strptime("2026-11-21T12:00:00Z", "%Y-%m-%dT%H:%M:%SZ"))
THREE = NOON + 15 * 3600  # 03:00 the next day


def decide(policy: dict, busy: bool, staged_at: float | None, now: float,
           trusted: float | None) -> str | None:
    (out,) = unix_results(f"""
from mpota.policy import decide
result(decide({policy!r}, {busy!r}, {staged_at!r}, {now!r}, {trusted!r}))
""")
    return out


def explain(code: str, policy: dict, staged_at: float | None, now: float) -> str:
    (out,) = unix_results(f"""
from mpota.policy import explain
result(explain({code!r}, {policy!r}, {staged_at!r}, {now!r}))
""")
    return str(out)


def policy(window: tuple[int, int] | None = None, delay: int = 0) -> dict:
    return {"window": list(window) if window else None, "reboot_delay_s": delay}


def test_busy_always_wins() -> None:
    assert decide(policy(), True, None, NOON, NOON) == "busy"
    assert explain("busy", policy(), None, NOON) == "the application is busy"
    assert decide(policy(), False, None, NOON, NOON) is None


def test_deferred_reboot() -> None:
    assert decide(policy(delay=600), False, NOON, NOON + 60, None) == "deferred"
    assert explain("deferred", policy(delay=600), NOON, NOON + 60) == "reboot deferred for 540 s"
    assert decide(policy(delay=600), False, NOON, NOON + 601, None) is None


def test_maintenance_window_needs_a_trusted_clock() -> None:
    window = (2 * 60, 4 * 60)  # 02:00-04:00 UTC
    assert decide(policy(window), False, None, THREE, THREE) is None
    assert decide(policy(window), False, None, NOON, NOON) == "window"
    assert explain("window", policy(window), None, NOON) == "outside the maintenance window"
    assert decide(policy(window), False, None, THREE, None) == "no-clock"
    assert "no trusted clock" in explain("no-clock", policy(window), None, THREE)


def test_window_across_midnight() -> None:
    window = (23 * 60, 1 * 60)
    assert decide(policy(window), False, None, NOON + 11.5 * 3600, NOON + 11.5 * 3600) is None
    assert decide(policy(window), False, None, NOON, NOON) == "window"
