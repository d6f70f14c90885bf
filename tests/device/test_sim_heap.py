"""The simulator's heap budget: device code finds what it was promised, and
interned names are charged at an ESP32's cost."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import unix_results
from mpota_host.sim import runner
from mpota_host.sim.harness import AGENT_MODULES, SimBoard


@pytest.fixture
def board_with_agent(booted: SimBoard) -> SimBoard:
    shutil.copytree(runner.compiled_agent() / "mpota", booted.fs / "lib" / "mpota")
    return booted


def _free_at_start(board: SimBoard, heapsize: str, names: str | None = None) -> int:
    script = board.sim_dir / "free.py"
    script.write_text("import gc\ngc.collect()\nprint('FREE', gc.mem_free())\n")
    cmd, env = runner.command(board.flash, script, heapsize=heapsize)
    if names is not None:
        env["MPOTA_SIM_NAMES"] = names
    out = subprocess.run(cmd, env=env, cwd=board.sim_dir / "fs", capture_output=True,
                         text=True, timeout=60).stdout
    return int(out.split("FREE")[1].split()[0])


@pytest.mark.parametrize("heapsize", ["40K", "64K", "200K"])
def test_device_code_finds_its_budget_free(board_with_agent: SimBoard, heapsize: str) -> None:
    budget = runner.heap_bytes(heapsize)
    free = _free_at_start(board_with_agent, heapsize, names="0")
    # the script's own compiled code takes a few hundred bytes
    assert budget - 1024 <= free <= budget, (budget, free)


def test_names_are_charged_at_an_esp32_s_cost(board_with_agent: SimBoard) -> None:
    names = runner.board_names(board_with_agent.fs)
    assert 200 < names < 1200  # the agent's own names, none of the built-in ones
    cost = unix_results(f"""
import sys
sys.path.append({str(runner.SIM_DIR)!r})
import simnames
result([simnames.esp32_cost(n) for n in (1, 20, 21, 60, 61, {names})])
""")[0]
    # pools of 20, 40, 80... entries, 7 bytes each plus a header, in 16-byte blocks
    assert cost[:5] == [160, 160, 464, 464, 1040]
    free = _free_at_start(board_with_agent, "64K")
    assert 65536 - cost[5] - 1024 <= free <= 65536 - cost[5]


def test_frozen_modules_intern_no_names_at_run_time(board_with_agent: SimBoard) -> None:
    assert runner.board_names(board_with_agent.fs, AGENT_MODULES) == 0


def test_mpy_names_reads_a_module_s_own_names(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def very_particular_name(x):\n    return x.another_odd_name\n")
    subprocess.run([runner.mpy_cross_command(), str(source)], check=True)
    names = runner.mpy_names(tmp_path / "m.mpy")
    assert {b"very_particular_name", b"another_odd_name"} <= names
