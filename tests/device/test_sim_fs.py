"""The simulated board's filesystem and NVS across power cuts: what LittleFS and
ESP-IDF's NVS guarantee, no more and no less (device/sim/simfs.py, simnvs.py,
simpower.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import PRELUDE, results, run_device
from mpota_host.errors import SimulatorError
from mpota_host.sim import runner
from mpota_host.sim.harness import SimBoard

SAVE = """
with open("data.txt.tmp", "w") as f:
    f.write("new ")
    f.write("content")
import os
os.rename("data.txt.tmp", "data.txt")
"""


def cut_at(board: SimBoard, n: int, code: str) -> str:
    """Run code with power lost at its n-th durable operation; how it ended."""
    board.cut_power_at(n, ops="durable")
    try:
        run = run_device(board, code)
    finally:
        board.cut_power_at(None)
    return str(run.ended)


def test_every_file_change_is_a_durable_operation(booted: SimBoard) -> None:
    booted.clear_counters()
    booted.trace_ops()
    run = run_device(booted, SAVE)
    assert run.ended == "exit:0", run.output
    assert [line.split(" ", 1)[1] for line in booted.ops()] == [
        "fs-open data.txt.tmp", "fs-write data.txt.tmp", "fs-close data.txt.tmp",
        "fs-rename data.txt.tmp -> data.txt"]
    assert booted.counters().durable == 4
    assert (booted.fs / "data.txt").read_text() == "new content"
    assert not (booted.fs / "data.txt.tmp").exists()


@pytest.mark.parametrize(("n", "op", "tmp", "data"), [
    (1, "fs-open", None, "old"),  # the .tmp was never created
    (2, "fs-write", "", "old"),  # torn: created empty, the new bytes lost
    (3, "fs-close", "", "old"),  # the commit did not land: still empty
    (4, "fs-rename", "new content", "old"),  # complete but not renamed
])
def test_cut_during_an_atomic_save(booted: SimBoard, n: int, op: str, tmp: str | None,
                                   data: str) -> None:
    booted.write_file("data.txt", "old")
    ended = cut_at(booted, n, SAVE)
    assert ended.startswith(f"power-cut {op} data.txt"), ended
    assert (booted.fs / "data.txt").read_text() == data
    path = booted.fs / "data.txt.tmp"
    assert (path.read_text() if path.exists() else None) == tmp


def test_uncommitted_data_never_reaches_an_existing_file(booted: SimBoard) -> None:
    booted.write_file("log.txt", "first\n")
    code = """
f = open("log.txt", "w")
f.write("second\\n")
f.flush()             # LittleFS commits here: a cut later keeps "second"
f.write("third\\n")
f.close()
g = open("log.txt", "a")
g.write("fourth\\n")
g.close()
"""
    # ops: open, write, sync, write, close, open, write, close
    expected = {1: "first\n", 2: "first\n", 3: "first\n", 4: "second\n", 5: "second\n",
                6: "second\nthird\n", 7: "second\nthird\n", 8: "second\nthird\n"}
    for n, content in expected.items():
        booted.write_file("log.txt", "first\n")
        assert cut_at(booted, n, code).startswith("power-cut fs-"), n
        assert (booted.fs / "log.txt").read_text() == content, n
    booted.write_file("log.txt", "first\n")
    assert run_device(booted, code).ended == "exit:0"
    assert (booted.fs / "log.txt").read_text() == "second\nthird\nfourth\n"
    # what power took away is gone at the next power-on (LittleFS's mount)
    assert list((booted.sim_dir / "fs-pending").iterdir()) == []


def test_files_behave_as_files(booted: SimBoard) -> None:
    out = results(run_device(booted, PRELUDE + """
import os
with open("a.bin", "wb") as f:
    result(f.write(b"\\x00\\x01\\x02"))
    f.seek(1)
    f.write(b"\\x09")
with open("a.bin", "rb") as f:
    result(list(f.read()))
with open("a.bin", "r+b") as f:
    result(list(f.read(2)))
    f.write(b"\\x07")
with open("a.bin", "rb") as f:
    result(list(f.read()))
with open("j.json", "w") as f:
    json.dump({"k": [1, "x"]}, f)
    print("line", file=f)
result(open("j.json").read())
result(err(open, "a.bin", "x"))
result(err(open, "missing", "r+"))
os.mkdir("d")
os.rename("a.bin", "d/b.bin")
result(os.listdir("d"))
os.remove("d/b.bin")
os.rmdir("d")
result("d" in os.listdir())
result(os.getenv("MPOTA_SIM_FLASH") is not None)
"""))
    assert out == [3, [0, 9, 2], [0, 9], [0, 9, 7], '{"k": [1, "x"]}line\n', [17], [2],
                   ["b.bin"], False, True]


def test_nvs_sets_are_durable_one_by_one(booted: SimBoard) -> None:
    code = """
from esp32 import NVS
n = NVS("mpota")
n.set_i32("a", 2)
n.set_i32("b", 2)
n.commit()
"""
    run_device(booted, code.replace("2)", "1)"))
    seen = {}
    for n in (1, 2, 3):
        ended = cut_at(booted, n, code)
        seen[n] = (ended, results(run_device(booted, PRELUDE + """
from esp32 import NVS
n = NVS("mpota")
result([n.get_i32("a"), n.get_i32("b")])
"""))[0])
    assert seen == {1: ("power-cut nvs-set mpota/a", [1, 1]),
                    2: ("power-cut nvs-set mpota/b", [2, 1]),
                    3: ("power-cut nvs-commit mpota", [2, 2])}


def test_flash_operations_share_the_durable_count(booted: SimBoard) -> None:
    booted.clear_counters()
    booted.trace_ops()
    run = run_device(booted, """
from esp32 import Partition
Partition("ota_1").writeblocks(0, bytearray(4096))
open("x", "w").close()
""")
    assert run.ended == "exit:0", run.output
    # creating a file commits it at once; closing it unchanged commits nothing
    assert [line.split(" ", 1)[1] for line in booted.ops()] == [
        "erase 0x190000", "write 0x190000", "fs-open x"]
    counters = booted.counters()
    assert (counters.total, counters.durable) == (2, 3)
    assert cut_at(booted, 2, """
from esp32 import Partition
Partition("ota_1").writeblocks(1, b"\\x55" * 4096)
""") == "power-cut write 0x191000"


def test_cut_at_a_flash_read_of_a_range(booted: SimBoard) -> None:
    code = """
from esp32 import Partition
p = Partition("ota_1")
buf = bytearray(4096)
for block in range(4):
    p.readblocks(block, buf)
    print("read", block)
"""
    booted.cut_power_at_read(3, 0x190000, 0x180000)
    try:
        run = run_device(booted, code)
    finally:
        booted.cut_power_at(None)
    assert run.ended == "power-cut read 0x192000"
    assert "read 1" in run.output and "read 2" not in run.output
    assert run_device(booted, code).ended == "exit:0"  # disarmed


def test_agent_state_survives_a_cut_at_every_operation_of_a_save(booted: SimBoard) -> None:
    """mpota's state file: after a cut anywhere in save(), State() reads the old
    or the new state, never a torn one."""
    save = PRELUDE + """
from mpota.state import State
s = State()
s.save(state="DOWNLOADING", written=8192)
"""
    load = PRELUDE + """
from mpota.state import State
result(State().data)
"""
    lib = booted.fs / "lib"
    lib.mkdir(exist_ok=True)
    shutil.copytree(runner.compiled_agent() / "mpota", lib / "mpota")
    booted.write_file("mpota_state.json", json.dumps({"state": "IDLE"}))
    for n in range(1, 5):
        assert cut_at(booted, n, save).startswith("power-cut fs-"), n
        assert results(run_device(booted, load))[0] == {"state": "IDLE"}, n
    assert run_device(booted, save).ended == "exit:0"
    assert results(run_device(booted, load))[0] == {"state": "DOWNLOADING", "written": 8192}


def test_cut_arguments_are_checked(booted: SimBoard) -> None:
    with pytest.raises(SimulatorError, match="one of flash, durable"):
        booted.cut_power_at(1, ops="fs")
    with pytest.raises(SimulatorError, match="1 or more"):
        booted.cut_power_at(0, ops="durable")
