"""Field-technician commands, run as a user runs them, with real mpremote
against the simulated board on a pseudo-terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet import Fleet
from helpers import BOARD_4MB, tool
from mpota_host import keys, provisioning, technician
from mpota_host.firmware import write_image
from mpota_host.server.store import add_device
from mpota_host.sim.harness import SimBoard
from mpota_host.sim.serial import SerialBoard, wait_for
from netfaults import FaultProxy
from test_agent import WIFI, agent_state

PROBATION_ONLY = "import mpota\nmpota.probation()\n"


def mpota(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([tool("mpota"), *args], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mpota {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


@pytest.fixture
def serial(request: pytest.FixtureRequest) -> Iterator[list[SerialBoard]]:
    boards: list[SerialBoard] = []
    yield boards
    for b in boards:
        b.stop()


def settled_state(board: SimBoard) -> dict[str, Any]:
    """The agent's state file once it parses: after a pulled cable the board runs
    on and may be replacing the file while the host reads it."""
    for _ in range(100):
        try:
            return agent_state(board)
        except json.JSONDecodeError:
            time.sleep(0.05)
    return agent_state(board)


def on_serial(serial: list[SerialBoard], board: SimBoard, baud: int | None = None) -> SerialBoard:
    s = SerialBoard(board, baud=baud)
    serial.append(s)
    s.wait_for_repl()
    return s


def status(port: str) -> dict[str, Any]:
    return json.loads(mpota("status", "--port", port, "--json").stdout)


def bare_board(fleet: Fleet) -> SimBoard:
    image = fleet.root / "bare-v1.bin"
    write_image(image, "1.0.0", "healthy", 64 * 1024)
    return SimBoard.create(BOARD_4MB, image, fleet.root / "bare.flash")


def provisioning_config(fleet: Fleet, enc: keys.KeyPair | None = None) -> Path:
    token = add_device(fleet.data, "field-1")
    cfg: dict[str, Any] = {
        "server": f"https://localhost:{fleet.server.port}", "device_id": "field-1",
        "token": token, "board": "esp32-generic-4mb", "ca": str(fleet.server.ca_pem),
        "trusted_keys": [str(fleet.pair.public)], "version": "1.0.0", "version_code": 1,
        "wifi": WIFI["wifi"],
    }
    if enc is not None:
        cfg["encryption_key"] = str(enc.private)
    path = fleet.root / "provision.json"
    path.write_text(json.dumps(cfg))
    return path


def test_status_of_a_board_without_the_agent(fleet: Fleet, serial) -> None:
    s = on_serial(serial, bare_board(fleet))
    out = mpota("status", "--port", s.port).stdout
    assert "not installed: run 'mpota provision'" in out
    assert "running slot  ota_0" in out and "seq=1 VALID" in out


def test_provision_is_idempotent_and_installs_keys(fleet: Fleet, serial) -> None:
    enc = keys.generate(fleet.root / "enc", name="encryption")
    board = bare_board(fleet)
    s = on_serial(serial, board)
    config = provisioning_config(fleet, enc)
    first = mpota("provision", "--port", s.port, "--config", str(config), "--hooks").stdout
    assert "lib/mpota/agent.mpy" in first and f"decryption key {enc.key_id}" in first
    second = mpota("provision", "--port", s.port, "--config", str(config), "--hooks").stdout
    assert "0 written" in second, second
    info = status(s.port)
    assert info["agent"] == "0.1.0" and info["version_code"] == 1 and info["state"] == "IDLE"
    cfg = json.loads((board.fs / "mpota.json").read_text())
    assert cfg["device_id"] == "field-1" and cfg["ca"] == "mpota-ca.pem"
    assert (board.fs / "mpota-ca.pem").read_bytes() == fleet.server.ca_pem.read_bytes()
    assert "enc_key" in json.loads((board.sim_dir / "nvs.json").read_text())["mpota"]


def test_provision_refuses_another_bytecode_version(fleet: Fleet, serial,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    board = bare_board(fleet)
    s = on_serial(serial, board)
    monkeypatch.setattr(provisioning, "mpy_cross_version", lambda: (6, 1))
    config = technician.ProvisionConfig.load(provisioning_config(fleet))
    with technician.connect(s.port) as link, pytest.raises(
            technician.VersionMismatch, match=r"reads .mpy v6.3, this mpy-cross writes v6.1"):
        technician.provision_board(link, config)
    assert not (board.fs / "lib").exists()


def test_trigger_streams_progress_and_the_board_updates(fleet: Fleet, serial) -> None:
    fleet.publish("2.0.0", 2, size=256 * 1024)
    board = fleet.device(config=WIFI, main_py=PROBATION_ONLY)
    s = on_serial(serial, board)
    out = mpota("trigger", "--port", s.port).stdout
    assert "downloaded 100%" in out and "rebooting into 2.0.0" in out
    assert "result: REBOOTING into 2.0.0" in out
    wait_for(lambda: "reset" in s.boots, 20, "the board to reboot")
    info = status(s.port)
    assert info["running"] == "ota_1" and info["version"] == "2.0.0", info
    assert info["otadata"][1]["state"] == "VALID"


def test_ctrl_c_during_trigger_leaves_the_board_on_its_image(fleet: Fleet, serial) -> None:
    fleet.publish("2.0.0", 2, size=512 * 1024)
    with FaultProxy(fleet.server.port, stall_after=150_000) as proxy:
        # progress saved every window (not only after save_ms) before the stall
        board = fleet.device(port=proxy.port, main_py=PROBATION_ONLY,
                             config=WIFI | {"download": {"stall_s": 30, "save_ms": 0}})
        s = on_serial(serial, board)
        proc = subprocess.Popen([tool("mpota"), "trigger", "--port", s.port],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            lines.extend(proc.stdout)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: any("downloaded 10%" in ln for ln in lines), 30, "download progress")
        time.sleep(0.5)  # now stalled in the middle of the download
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        reader.join(5)
        text = "".join(lines)
        assert f"'mpota trigger --port {s.port}' resumes it" in lines[-1], text
        assert "Traceback" not in text
        state = agent_state(board)
        assert state["state"] == "DOWNLOADING" and state["written"] > 0
        info = status(s.port)
        assert info["running"] == "ota_0" and info["boot"] == "ota_0"
        shown = mpota("status", "--port", s.port).stdout
        assert f"an update to 2.0.0 stopped at {state['written']} of" in shown, shown
        assert f"'mpota trigger --port {s.port}' resumes it" in shown, shown
        proxy.stall_after = None
        out = mpota("trigger", "--port", s.port).stdout
    assert "rebooting into 2.0.0" in out, out
    assert any(f"resumed at byte {state['written']}" in (r["detail"] or "")
               for r in fleet.reports(json.loads((board.fs / "mpota.json").read_text())
                                      ["device_id"]))


@pytest.mark.parametrize(("encrypted", "pull_at"), [
    (False, 0.4), (True, 0.4),
    (True, 1.0),  # every byte sent, the cable goes before finish()
], ids=["plain", "encrypted", "encrypted-before-finish"])
def test_push_survives_a_pulled_cable(fleet: Fleet, serial, encrypted: bool,
                                      pull_at: float) -> None:
    # an image size that is not a multiple of 4096, as almost every real image
    size = 256 * 1024 + 5000
    enc = keys.generate(fleet.root / "enc", name="encryption") if encrypted else None
    rel = fleet.publish("2.0.0", 2, size=size,
                        **({"encrypt_for": [keys.load_public(enc.public)]} if enc else {}))
    board = fleet.device(config=WIFI, main_py=PROBATION_ONLY, enc_key=enc.private if enc else None)
    s = on_serial(serial, board)

    def pull(done: int, total: int) -> None:
        if done >= pull_at * total and s.port:
            s.unplug()

    with pytest.raises(technician.BoardUnreachable, match="lost the board"):
        link = technician.BoardLink(s.port)
        try:
            technician.push_release(link, rel, 115200, pull)
        finally:
            link.close()
    state = settled_state(board)
    assert state["state"] == "DOWNLOADING" and state["written"] > 0, state
    port = s.replug()
    if pull_at == 1.0:
        # what a reset after the last progress save leaves: all bytes counted, the
        # last (partial) block included
        with technician.connect(port) as link:
            total = (rel / "payload").stat().st_size
            link.exec(f"import mpota\nmpota.get_agent().st.save(written={total})")
    out = mpota("push", "--port", port, str(rel)).stdout
    assert "resumed at byte" in out and "pushed 2.0.0" in out, out
    if pull_at == 1.0:  # at the last whole block: only the partial block is sent again
        total = (rel / "payload").stat().st_size
        assert f"resumed at byte {total // 4096 * 4096}" in out, out
    wait_for(lambda: "reset" in s.boots, 20, "the board to reboot")
    info = status(s.port)
    assert info["running"] == "ota_1" and info["otadata"][1]["state"] == "VALID", info
    image = (fleet.root / f"fw-2.0.0-healthy-{size}.bin").read_bytes()
    assert board.flash.read_bytes()[0x190000 : 0x190000 + len(image)] == image


def test_tampered_release_pushed_offline_is_refused(fleet: Fleet, serial) -> None:
    rel = fleet.publish("2.0.0", 2)
    raw = bytearray((rel / "payload").read_bytes())
    raw[30000] ^= 1
    (rel / "payload").write_bytes(raw)
    board = fleet.device(config=WIFI, main_py=PROBATION_ONLY)
    s = on_serial(serial, board)
    proc = mpota("push", "--port", s.port, str(rel), check=False)
    assert proc.returncode == 1 and "does not match the manifest" in proc.stderr, proc.stderr
    info = status(s.port)
    assert (info["running"], info["boot"]) == ("ota_0", "ota_0")
    assert [e["state"] for e in info["otadata"]] == ["VALID", "empty"]
    (rel / "manifest.json").write_text((rel / "manifest.json").read_text().replace("2.0.0", "9"))
    proc = mpota("push", "--port", s.port, str(rel), check=False)
    assert "FAILED (bad-signature)" in proc.stderr, proc.stderr


def test_push_of_a_payload_that_is_no_app_image_ends_failed(fleet: Fleet, serial) -> None:
    rel = fleet.publish("2.0.0", 2)
    raw = bytearray((rel / "payload").read_bytes())
    raw[0] = 0x00
    (rel / "payload").write_bytes(raw)
    board = fleet.device(config=WIFI, main_py=PROBATION_ONLY)
    s = on_serial(serial, board)
    proc = mpota("push", "--port", s.port, str(rel), check=False)
    assert proc.returncode == 1 and "does not start with an app image header" in proc.stderr, \
        proc.stderr
    state = agent_state(board)
    assert state["state"] == "IDLE" and state["last_result"]["code"] == "image", state
    assert "FAILED" in fleet.states(json.loads((board.fs / "mpota.json").read_text())
                                    ["device_id"])
    assert board.flash.read_bytes()[0x190000 : 0x190000 + 4096] == b"\xff" * 4096


def test_push_at_115200_baud_reports_its_rate(fleet: Fleet, serial) -> None:
    rel = fleet.publish("2.0.0", 2, size=24 * 1024)
    board = fleet.device(config=WIFI, main_py=PROBATION_ONLY)
    s = on_serial(serial, board, baud=115200)
    out = mpota("push", "--port", s.port, "--no-apply", str(rel)).stdout
    rate = float(out.split("(")[1].split(" B/s")[0])
    assert "of the 115200 baud line" in out and rate > 0.5 * 11520, out


def test_sim_serial_command(fleet: Fleet) -> None:
    board = bare_board(fleet)
    proc = subprocess.Popen([tool("mpota"), "sim", "serial", "--flash", str(board.flash)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = line.split(" on ")[1].split(" at ")[0]
        assert status(port)["running"] == "ota_0"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_no_board_on_the_port() -> None:
    proc = mpota("status", "--port", "/dev/does-not-exist", check=False)
    assert proc.returncode == 3 and "no serial port /dev/does-not-exist" in proc.stderr
    assert os.path.exists("/dev/does-not-exist") is False
