"""The benchmark's code paths, fast (no timing asserts): ``python -m bench --quick``
writes every figure, the simulator's event counters count, and the ESP32 probe
runs on the unix port and on the simulated board."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpota_host.sim import runner

REPO = runner.REPO_DIR
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import update_bench  # noqa: E402

KEYS = ("update_ratio_R", "secure_floor_ratio", "tls_handshakes_per_update",
        "http_requests_per_update", "state_writes_per_update", "heap_mpy_plain_kib",
        "heap_mpy_encrypted_kib", "heap_frozen_plain_kib", "heap_frozen_encrypted_kib",
        "p256_verify_vs_naive", "app_max_stall_ms", "app_ticks_kept_ratio",
        "encrypted_app_max_stall_ms", "encrypted_app_ticks_kept_ratio",
        "async_vs_blocking_update_time", "encrypted_async_vs_blocking_update_time",
        "block_ms", "idle_max_gap_ms", "board_model_async_max_stall_ms",
        "board_model_async_duty_pct_25_ticks_kept_ratio")


def _probe_lines(output: str) -> dict[str, object]:
    line = next((ln for ln in output.splitlines() if ln.startswith("PROBE_JSON ")), None)
    assert line is not None, output
    found: dict[str, object] = json.loads(line[len("PROBE_JSON "):])
    return found


def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads((tmp_path / "latest.json").read_text())
    for key in KEYS:
        assert key in figures, key
    assert all(not isinstance(v, dict | list) for v in figures.values())  # flat
    assert figures["failed"] == ""
    for prefix in ("", "encrypted_"):
        assert figures[f"{prefix}update_ratio_R"] > 0
        assert figures[f"{prefix}secure_floor_ratio"] > 0
        assert figures[f"{prefix}tls_handshakes_per_update"] >= 1
        assert figures[f"{prefix}http_requests_per_update"] >= 3  # check, payload, a report
        assert figures[f"{prefix}payload_requests_per_update"] >= 1
        assert figures[f"{prefix}state_writes_per_update"] >= 2
        assert figures[f"{prefix}flash_writes_per_update"] >= 32  # 128 KiB in 4 KiB blocks
    for key in KEYS[5:9]:
        assert 8 <= figures[key] <= 256, (key, figures[key])
    for prefix in ("", "encrypted_"):
        # the blocking agent holds the interpreter: no tick runs during its update
        assert figures[f"{prefix}blocking_app_ticks_kept_ratio"] == 0
        assert figures[f"{prefix}app_max_stall_ms"] > 0 and figures[f"{prefix}block_ms"] > 0
    # with the flash timing model a gap that holds a block's writeblocks holds its
    # sector erase and 16 page programs (a sleep never ends early)
    assert figures["board_model_async_max_stall_ms"] >= 45 + 16 * 0.4
    table = (tmp_path / "latest.md").read_text()
    assert "Where a plain install's time goes" in table
    assert "the agent's own Python" in table
    assert "What an update costs the application" in table
    assert "What a real board adds" in table


def test_trace_breakdown_accounts_for_the_whole_install(tmp_path: Path) -> None:
    rig = update_bench.make_rig(tmp_path, encrypted=True, size=64 * 1024)
    try:
        trace = update_bench.traced_update(rig)
    finally:
        rig.server.stop()
    events = update_bench.events(trace)
    assert events["requests"][0].startswith("GET /v1/update")
    assert any(r.startswith("POST /v1/report") for r in events["requests"])
    assert events["flash_erases"] >= 16 and events["flash_writes"] >= 16
    assert events["fs_durable_ops"] >= 4 * events["state_writes"]  # open, write, close, rename
    found = update_bench.breakdown(trace)
    buckets = found["buckets_ms"]
    assert buckets["AES-CBC decrypt"] > 0 and buckets["flash erases + writes"] > 0
    assert sum(buckets.values()) == pytest.approx(found["total_ms"])
    assert [p["phase"].split(":")[0] for p in found["phases"]][:2] == ["start", "check"]


def test_probe_on_the_unix_port_degrades_without_esp32() -> None:
    env = dict(os.environ, MICROPYPATH=str(runner.compiled_agent()))
    proc = subprocess.run([runner.micropython_command(), str(REPO / "bench" / "esp32_probe.py")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = _probe_lines(proc.stdout)
    assert found["p256_verify_ok"] is True
    assert found["flash_read_kib_s"] == "n/a"
    assert str(found["agent"]).startswith("not configured")
    assert isinstance(found["sha256_kib_s"], float)
    assert isinstance(found["aes_cbc_decrypt_kib_s"], float)


def test_probe_on_a_configured_board_times_an_update(tmp_path: Path) -> None:
    rig = update_bench.make_rig(tmp_path / "rig", encrypted=False, size=64 * 1024)
    try:
        source = (REPO / "bench" / "esp32_probe.py").read_text()
        assert "\nRUN_UPDATE = False\n" in source
        script = tmp_path / "probe.py"
        script.write_text(source.replace("\nRUN_UPDATE = False\n", "\nRUN_UPDATE = True\n"))
        rig.fresh()
        result = rig.board.run(script, heapsize="256K", timeout=120)
    finally:
        rig.server.stop()
    found = _probe_lines(result.output)
    assert found["update_result"] == "STAGED", result.output[-2000:]
    assert isinstance(found["flash_read_kib_s"], float)
    assert isinstance(found["heap_free_with_agent"], int)
    assert found["update_handshakes"] >= 1  # type: ignore[operator]
    assert found["update_requests"] >= 3  # type: ignore[operator]
    assert "PROBE event" in result.output
