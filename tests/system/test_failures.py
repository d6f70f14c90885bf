"""How the agent's updates end when something goes wrong (issue 9 B5, B6, B7, C1):
every fault ends in a recorded, reported state, and nothing escapes into the
application's main.py."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mpota_host import devtls, keys, release
from mpota_host.firmware import write_image
from mpota_host.sim.harness import SimBoard
from netfaults import StaticHTTPS
from test_agent import WIFI, agent_state, device_id, otadata_states, story

# every test here runs with the blocking agent and with the asyncio one
pytestmark = pytest.mark.usefixtures("driver")

# main.py of the tests: the application goes on after every mpota call
POLL = "import mpota\nmpota.probation()\nprint('RESULT', mpota.poll())\nprint('APP GOES ON')\n"


def _clean(records: list[Any]) -> str:
    out = "\n".join(r.output for r in records)
    assert "Traceback" not in out, out
    return out


def test_image_the_bootloader_refuses_ends_failed(fleet) -> None:
    # a correctly signed manifest whose image is built for another chip (ESP32-C3):
    # the hash matches, and set_boot() refuses it with an OSError
    rel = fleet.publish("2.0.0", 2)
    image = fleet.root / "fw-c3.bin"
    write_image(image, "2.0.0", "healthy", 64 * 1024, chip_id=5)
    data = image.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    fields = json.loads((rel / "manifest.json").read_bytes())
    fields.update(size=len(data), payload_size=len(data), sha256=digest, payload_sha256=digest)
    raw = release.encode_manifest(fields)
    (rel / "payload").write_bytes(data)
    (rel / "manifest.sig").write_bytes(keys.sign(fleet.key, raw))
    (rel / "manifest.json").write_bytes(raw)
    board = fleet.device(config=WIFI, main_py=POLL)
    records = board.boot(max_boots=2)
    out = _clean(records)
    assert story(records) == [("ota_0", "1.0.0", "repl")], out
    assert "bootloader refused the image in ota_1" in out and "APP GOES ON" in out, out
    state = agent_state(board)
    assert state["state"] == "IDLE", state
    assert state["last_result"]["state"] == "FAILED" and state["last_result"]["code"] == "image"
    assert "ESP_ERR_OTA_VALIDATE_FAILED" in state["last_result"]["reason"]
    assert state["rejected"] == [2]  # the signed release itself can never boot here
    assert fleet.states(device_id(board))[-1] == "FAILED"
    assert otadata_states(board) == ["VALID", "UNDEFINED"]


def test_ca_file_that_is_not_a_certificate_is_a_config_error(fleet) -> None:
    board = fleet.device(config=WIFI, main_py=POLL, ca_der=b"this is not a certificate\n")
    records = board.boot(max_boots=1)
    out = _clean(records)
    assert "mpota: config: CA file mpota-ca.der: not a DER certificate" in out, out
    assert "put the CA certificate(s) there as PEM or DER" in out
    assert "APP GOES ON" in out


def test_a_pem_ca_bundle_is_accepted(fleet, tmp_path: Path) -> None:
    fleet.publish("2.0.0", 2)
    other = devtls.create(tmp_path / "other-ca")
    server_ca = devtls.DevTLS(fleet.data / "tls").ca_pem.read_bytes()
    # the server's CA second in the bundle
    board = fleet.device(config=WIFI, ca_der=other.ca_pem.read_bytes() + server_ca)
    records = board.boot(max_boots=3)
    assert story(records)[-1] == ("ota_1", "2.0.0", "repl"), records[0].output


# --- permanent refusals while downloading the payload (B6) ---

class _Refusing(http.server.SimpleHTTPRequestHandler):
    """GET /<mode>/<release>/<file>: manifest.json and manifest.sig as they are;
    the payload refused in the way <mode> says."""

    def log_message(self, format: str, *args: object) -> None:
        return

    def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        mode, _, rest = self.path.lstrip("/").partition("/")
        if not rest.endswith("/payload"):
            self.path = "/" + rest
            super().do_GET()
            return
        size = Path(self.directory, rest).stat().st_size  # type: ignore[attr-defined]
        port = self.server.server_address[1]
        if mode == "chunked":
            self._answer(200, {"Transfer-Encoding": "chunked"}, b"4\r\nE9x\x00\r\n0\r\n\r\n")
        elif mode == "range":  # a Content-Range for a payload of another size
            self._answer(206, {"Content-Range": f"bytes 0-4095/{size + 4096}",
                               "Content-Length": "4096"}, bytes(4096))
        elif mode == "size":  # Range ignored, and the whole body is not the manifest's size
            self._answer(200, {"Content-Length": str(size + 1)}, bytes(size + 1))
        elif mode == "http":
            self._answer(302, {"Location": f"http://localhost:{port}/{rest}",
                               "Content-Length": "0"})
        elif mode == "loop":
            self._answer(302, {"Location": f"/loop/{rest}", "Content-Length": "0"})
        elif mode == "gone":
            self._answer(404, {"Content-Length": "0"})
        else:  # "busy": a passing server fault, retried and then resumed later
            self._answer(503, {"Content-Length": "0"})


class RefusingHTTPS(StaticHTTPS):
    handler = _Refusing


PERMANENT = {"chunked": "chunked", "range": "", "size": "", "http": "http://",
             "loop": "redirect", "gone": "404"}


def _cases(fleet, modes: list[str], config: dict[str, Any]) -> tuple[SimBoard, str,
                                                                      dict[str, Any]]:
    rel = fleet.publish("2.0.0", 2, name="rel")
    tls = devtls.DevTLS(fleet.data / "tls")
    with RefusingHTTPS(fleet.releases, tls.cert, tls.key) as static:
        main = (
            "import mpota, json\n"
            f"for mode in {modes!r}:\n"
            f"    r = mpota.update('https://localhost:{static.port}/%s/{rel.name}/' % mode)\n"
            "    st = json.load(open('mpota_state.json'))\n"
            "    print('CASE', json.dumps({'mode': mode, 'result': r, 'state': st['state'],\n"
            "        'written': st.get('written'), 'last': st.get('last_result'),\n"
            "        'rejected': st.get('rejected', [])}))\n"
            "print('APP GOES ON')\n")
        board = fleet.device(config=WIFI | config, main_py=main)
        records = board.boot(max_boots=1)
    out = _clean(records)
    assert story(records) == [("ota_0", "1.0.0", "repl")], out
    assert "APP GOES ON" in out, out
    cases = {c["mode"]: c for c in (json.loads(line[5:]) for line in out.splitlines()
                                    if line.startswith("CASE "))}
    assert list(cases) == modes, out
    return board, out, cases


def test_permanent_download_refusals_end_failed_and_reported(fleet) -> None:
    modes = list(PERMANENT)
    board, _, cases = _cases(fleet, modes, {})
    for mode, word in PERMANENT.items():
        case = cases[mode]
        assert case["result"]["result"] == "FAILED", case
        assert case["state"] == "IDLE" and case["written"] == 0, case
        last = case["last"]
        assert last["state"] == "FAILED" and last["version_code"] == 2, case
        assert last["code"] in ("download", "tls"), case
        assert word in last["reason"], case
        assert case["rejected"] == [], case  # an HTTP refusal is not the release's fault
    failed = [r for r in fleet.reports(device_id(board)) if r["state"] == "FAILED"]
    assert len(failed) == len(modes), fleet.reports(device_id(board))


def test_transport_faults_keep_the_download_for_the_next_poll(fleet) -> None:
    board, _, cases = _cases(fleet, ["busy"], {"download": {"retries": 1, "backoff_ms": 10}})
    case = cases["busy"]
    assert case["state"] == "DOWNLOADING", case  # resumed on the next poll
    assert case["last"]["state"] == "INTERRUPTED" and "503" in case["last"]["reason"], case
    assert case["rejected"] == [], case
    assert fleet.states(device_id(board))[-1] == "INTERRUPTED"


# --- a refused new offer during a download (B7) ---

def test_refused_new_offer_leaves_the_download_in_progress_alone(fleet, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    fleet.publish("2.0.0", 2, size=128 * 1024)
    # progress saved every window (not only after save_ms): a cut finds some
    template = fleet.device(config=WIFI | {"download": {"window": 16384, "save_ms": 0}})
    # a power cut in the middle of the download of v2 leaves it DOWNLOADING
    for n in range(12, 80, 4):
        board_dir = tmp_path / f"cut{n}"
        board_dir.mkdir()
        flash = board_dir / template.flash.name
        shutil.copyfile(template.flash, flash)
        shutil.copytree(template.sim_dir, Path(str(flash) + ".sim"))
        board = SimBoard(flash)
        board.boot(max_boots=1, cut_at=n)
        state = agent_state(board)
        if state.get("state") == "DOWNLOADING" and state.get("written"):
            break
    else:
        raise AssertionError("no power cut left the download in progress")
    written = state["written"]
    # the server now offers v3, which this device refuses (signed by an unknown key)
    v3 = fleet.publish("3.0.0", 3, key=ec.generate_private_key(ec.SECP256R1()))
    board.write_file("main.py", POLL)
    out = _clean(board.boot(max_boots=1))
    assert "mpota: unknown-key:" in out and "APP GOES ON" in out, out
    after = agent_state(board)
    assert after["state"] == "DOWNLOADING" and after["written"] == written, after
    assert after["target"]["version_code"] == 2
    assert after["last_result"]["version_code"] == 3, after
    assert after["rejected"] == [3], after
    # v3 is withdrawn: the download of v2 continues where it was
    shutil.rmtree(v3)
    records = board.boot(max_boots=3)
    assert story(records)[-1] == ("ota_1", "2.0.0", "repl"), records[0].output
    details = " ".join(r["detail"] or "" for r in fleet.reports(device_id(board)))
    assert f"resumed at byte {written}" in details


# --- the update source, with and without an mpota server (C1) ---

def test_probation_checks_the_release_host_not_the_mpota_api(fleet) -> None:
    # the device's "server" is a plain web server (no mpota API): probation must
    # not roll back a verified image because /v1/update answers 404
    rel = fleet.publish("2.0.0", 2, name="rel")
    tls = devtls.DevTLS(fleet.data / "tls")
    with StaticHTTPS(fleet.releases, tls.cert, tls.key) as static:
        base = f"https://localhost:{static.port}"
        main = ("import mpota\nmpota.probation()\n"
                "if mpota.status()['version'] == '1.0.0':\n"
                f"    print('RESULT', mpota.update('{base}/{rel.name}/'))\n")
        board = fleet.device(config=WIFI | {"server": base}, main_py=main)
        records = board.boot(max_boots=3)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], \
        records[-1].output
    assert "CONFIRMED 2.0.0 in ota_1" in records[1].output
    assert otadata_states(board) == ["VALID", "VALID"]


def test_device_without_an_mpota_server_updates_from_a_url(fleet) -> None:
    rel = fleet.publish("2.0.0", 2, name="rel")
    tls = devtls.DevTLS(fleet.data / "tls")
    with StaticHTTPS(fleet.releases, tls.cert, tls.key) as static:
        main = ("import mpota\nmpota.probation()\n"
                "if mpota.status()['version'] == '1.0.0':\n"
                f"    print('RESULT', mpota.update('https://localhost:{static.port}/{rel.name}/'))\n"
                "else:\n"
                "    print('POLL', mpota.poll())\n")
        board = fleet.device(config=WIFI | {"server": None, "device_id": None, "token": None},
                             main_py=main)
        records = board.boot(max_boots=3)
    out = _clean(records)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], out
    assert "CONFIRMED 2.0.0 in ota_1" in out
    assert "could not report" not in out  # no server: reports are skipped, not errors
    assert "no server configured" in records[1].output
    assert "mpota.update(URL)" in records[1].output
    state = agent_state(board)
    assert state["installed"]["ota_1"] == {"version": "2.0.0", "version_code": 2,
                                           "security_counter": 0}
    assert otadata_states(board) == ["VALID", "VALID"]


def test_an_exception_nobody_foresaw_ends_as_a_result(fleet) -> None:
    # the application's busy check divides by zero while the agent applies an update
    fleet.publish("2.0.0", 2)
    main = POLL.replace("import mpota\n", "import mpota\n@mpota.busy_check\ndef busy():\n"
                                             "    return 1 / 0\n")
    board = fleet.device(config=WIFI, main_py=main)
    records = board.boot(max_boots=2)
    out = _clean(records)
    assert story(records) == [("ota_0", "1.0.0", "repl")], out
    result = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1 and "'error': 'ZeroDivisionError'" in result[0], out
    assert "'result': 'FAILED'" in result[0], out
    assert "APP GOES ON" in out
    state = agent_state(board)
    assert state["state"] == "STAGED", state  # the verified image still waits for apply()
    assert state["last_result"]["state"] == "FAILED", state
    assert "unexpected ZeroDivisionError" in state["last_result"]["reason"], state
    assert "rejected" not in state
    assert fleet.states(device_id(board))[-1] == "FAILED"
