"""The technician commands' failure paths, run as a technician runs them
against the simulated serial board: the exit code, one line on stderr naming
the problem and the fix, no traceback; and what the board is left doing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import serial as pyserial

from fleet import Fleet
from helpers import tool
from mpota_host import devtls, technician
from mpota_host.sim.serial import SerialBoard, wait_for
from netfaults import StaticHTTPS
from test_agent import WIFI
from test_technician import (
    PROBATION_ONLY,
    bare_board,
    mpota,
    on_serial,
    provisioning_config,
    settled_state,
    status,
)

HEARTBEAT = ("import time\n"
             "with open('starts', 'a') as f:\n    f.write('x')\n"
             "n = 0\nwhile True:\n    n += 1\n    print('heartbeat', n)\n    time.sleep(0.2)\n")


@pytest.fixture
def serial() -> Any:
    boards: list[SerialBoard] = []
    yield boards
    for b in boards:
        b.stop()


def fails(proc: subprocess.CompletedProcess[str], code: int, words: str) -> str:
    """The one stderr line of a failed command, checked."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "b'" not in lines[0] and "{'" not in lines[0]  # no Python reprs
    return lines[0]


COMMANDS = [("status",), ("trigger",), ("push", "RELDIR"), ("provision", "--config", "CFG")]


def _args(command: tuple[str, ...], tmp_path: Path, fleet: Fleet | None = None) -> list[str]:
    out = []
    for word in command:
        if word == "RELDIR":
            out.append(str(tmp_path))
        elif word == "CFG":
            assert fleet is not None
            out.append(str(provisioning_config(fleet)))
        else:
            out.append(word)
    return out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_an_absent_port(command: tuple[str, ...], tmp_path: Path, fleet: Fleet) -> None:
    proc = mpota(*_args(command, tmp_path, fleet), "--port", "/dev/ttyNOPE", check=False)
    fails(proc, 3, "no serial port /dev/ttyNOPE: plug the board in")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_port_where_nothing_answers(command: tuple[str, ...], tmp_path: Path,
                                      fleet: Fleet) -> None:
    master, slave = os.openpty()  # a serial line with no board behind it
    try:
        proc = mpota(*_args(command, tmp_path, fleet), "--port", os.ttyname(slave),
                     "--timeout", "2", check=False, timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    fails(proc, 3, "no MicroPython REPL answers on")


def test_a_busy_port(fleet: Fleet, serial: list[SerialBoard]) -> None:
    s = on_serial(serial, bare_board(fleet))
    with pyserial.Serial(s.port, exclusive=True):  # a terminal program holding the port
        proc = mpota("status", "--port", s.port, check=False)
    fails(proc, 3, "is busy: another program")
    assert status(s.port)["running"] == "ota_0"  # released: the board answers again


def test_release_url_must_be_https_before_the_board_is_touched() -> None:
    proc = mpota("trigger", "--port", "/dev/ttyNOPE", "--release-url",
                 "http://cdn.example/rel/", check=False)
    fails(proc, 2, "only https:// URLs")


def test_trigger_on_a_board_without_the_agent(fleet: Fleet, serial: list[SerialBoard]) -> None:
    s = on_serial(serial, bare_board(fleet))
    fails(mpota("trigger", "--port", s.port, check=False), 1,
          "no mpota agent: run 'mpota provision' first")


def test_trigger_with_a_broken_config(fleet: Fleet, serial: list[SerialBoard]) -> None:
    board = fleet.device(config=WIFI, main_py=PROBATION_ONLY)
    (board.fs / "mpota.json").write_text('{"board": ')
    s = on_serial(serial, board)
    line = fails(mpota("trigger", "--port", s.port, check=False), 1,
                 "the update failed on the board (config)")
    assert "not valid JSON" in line
    info = status(s.port)
    assert "agent_error" in info


@pytest.mark.parametrize("case", ["404", "refused", "tls", "downgrade"])
def test_trigger_failures_exit_non_zero_with_the_reason(case: str, fleet: Fleet,
                                                        serial: list[SerialBoard]) -> None:
    rel = fleet.publish("0.5.0", 0, name="old")  # the board runs version_code 1
    tls = devtls.DevTLS(fleet.data / "tls")
    if case == "tls":  # a server whose certificate the board's pinned CA did not sign
        tls = devtls.create(fleet.root / "other-tls")
    with StaticHTTPS(fleet.releases, tls.cert, tls.key) as static:
        url, words = {
            "404": (f"https://localhost:{static.port}/no-such-release/", "404"),
            "refused": ("https://localhost:1/rel/", "(transport)"),
            "tls": (f"https://localhost:{static.port}/{rel.name}/", "(tls)"),
            "downgrade": (f"https://localhost:{static.port}/{rel.name}/", "(downgrade)"),
        }[case]
        board = fleet.device(config=WIFI, main_py=PROBATION_ONLY)
        s = on_serial(serial, board)
        proc = mpota("trigger", "--port", s.port, "--release-url", url, check=False)
    fails(proc, 1, "the update failed on the board")
    assert words in proc.stderr, proc.stderr
    assert status(s.port)["running"] == "ota_0"


def test_push_refusal_is_one_line(fleet: Fleet, serial: list[SerialBoard]) -> None:
    rel = fleet.publish("2.0.0", 2)
    (rel / "manifest.json").write_text((rel / "manifest.json").read_text().replace("2.0.0", "9"))
    s = on_serial(serial, fleet.device(config=WIFI, main_py=PROBATION_ONLY))
    fails(mpota("push", "--port", s.port, str(rel), check=False), 1,
          "the board refused the release: FAILED (bad-signature)")


def test_status_leaves_the_application_running(fleet: Fleet, serial: list[SerialBoard]) -> None:
    board = fleet.device(config=WIFI, main_py=PROBATION_ONLY + HEARTBEAT)
    s = SerialBoard(board)
    serial.append(s)

    def heartbeats(*beats: bytes) -> None:
        seen = b""
        with pyserial.Serial(s.port, timeout=0.5) as port:
            def beating() -> bool:
                nonlocal seen
                seen = (seen + port.read(port.in_waiting or 1))[-4096:]
                return all(beat in seen for beat in beats)

            wait_for(beating, 60, f"the application's heartbeats {beats}")

    heartbeats(b"heartbeat 2\r\n")  # booted: the application runs
    assert (board.fs / "starts").read_text() == "x"
    proc = mpota("status", "--port", s.port)
    assert "restarted with a soft reset" in proc.stderr, proc.stderr
    assert "soft-reset" in s.boots
    # it was started again, and beats
    wait_for(lambda: (board.fs / "starts").read_text() == "xx", 30, "the application's restart")
    heartbeats(b"heartbeat")


def test_ctrl_c_during_push_says_how_to_resume(fleet: Fleet, serial: list[SerialBoard]) -> None:
    rel = fleet.publish("2.0.0", 2, size=256 * 1024)
    board = fleet.device(config=WIFI, main_py=PROBATION_ONLY)
    s = on_serial(serial, board, baud=115200)
    proc = subprocess.Popen([tool("mpota"), "push", "--port", s.port, str(rel)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr or []), daemon=True)
    reader.start()
    wait_for(lambda: settled_state(board).get("written", 0) > 0, 60, "pushed bytes on flash")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    reader.join(5)
    lines = [ln for ln in err if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], err
    assert f"'mpota push --port {s.port} {rel}' resumes" in lines[0], lines
    assert "state DOWNLOADING" in lines[0]
    out = mpota("status", "--port", s.port).stdout
    assert "agent state   DOWNLOADING" in out, out
    assert f"'mpota push --port {s.port} RELEASE_DIR' resumes it" in out, out
    info = status(s.port)
    assert (info["running"], info["boot"]) == ("ota_0", "ota_0")


def test_trigger_streams_download_progress_events(fleet: Fleet, serial: list[SerialBoard]) -> None:
    fleet.publish("2.0.0", 2, size=256 * 1024)
    board = fleet.device(config=WIFI | {"download": {"save_ms": 0}}, main_py=PROBATION_ONLY)
    s = on_serial(serial, board)
    steps: list[tuple[int, int]] = []
    with technician.connect(s.port) as link:
        result = technician.trigger_update(link, None, lambda line: None,
                                           lambda done, total: steps.append((done, total)))
    assert result.result == "REBOOTING" and result.version == "2.0.0"
    total = (fleet.releases / "esp32-generic-4mb-2" / "payload").stat().st_size
    assert len(steps) > 2 and {t for _, t in steps} == {total}, steps
    assert [d for d, _ in steps] == sorted(d for d, _ in steps) and steps[-1][0] == total


def test_status_of_a_board_on_an_erased_otadata(fleet: Fleet, serial: list[SerialBoard]) -> None:
    s = on_serial(serial, bare_board(fleet))
    out = mpota("status", "--port", s.port).stdout
    assert "otadata[1]    empty" in out, out
    assert json.loads(mpota("status", "--port", s.port, "--json").stdout)["otadata"][1] == {
        "seq": None, "state": "empty", "crc_ok": True}
    assert "3.4.0" not in out and "MicroPython   1." in out, out


def test_provision_never_replaces_the_boards_own_main_py(fleet: Fleet,
                                                         serial: list[SerialBoard]) -> None:
    board = bare_board(fleet)
    own_boot, own_main = b"import esp\nesp.osdebug(None)\n", b"print('my app')\n"
    (board.fs / "boot.py").write_bytes(own_boot)
    (board.fs / "main.py").write_bytes(own_main)
    s = on_serial(serial, board)
    config = str(provisioning_config(fleet))
    line = fails(mpota("provision", "--port", s.port, "--config", config, "--hooks",
                       check=False), 1, "the board has its own main.py: add 'import mpota; ")
    assert "--force" in line and "nothing was written" in line
    assert not (board.fs / "lib").exists() and not (board.fs / "mpota.json").exists()
    assert (board.fs / "main.py").read_bytes() == own_main
    out = mpota("provision", "--port", s.port, "--config", config, "--hooks", "--force").stdout
    assert "main.py kept as main.py.bak" in out, out
    assert (board.fs / "main.py.bak").read_bytes() == own_main
    assert (board.fs / "main.py").read_bytes() == technician.HOOK_MAIN.encode()
    assert (board.fs / "boot.py").read_bytes() == technician.HOOK_BOOT.encode() + own_boot
    again = mpota("provision", "--port", s.port, "--config", config, "--hooks").stdout
    assert " 0 written" in again, again
