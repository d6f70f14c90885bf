"""mpota serve: the v1 API over real TLS on loopback, one test per attack it must refuse."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import http.client
import json
import os
import re
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import tool
from mpota_host import devtls, keys, release
from mpota_host.errors import DeviceError, ServerError
from mpota_host.server import (
    ServerHandle,
    add_device,
    list_devices,
    remove_device,
    reports,
    start_server,
)
from mpota_host.server.catalog import Release, UpdateQuery, newest_release
from mpota_host.server.store import Device
from mpota_host.server.urls import PayloadUrls, load_secret

BOARD = "esp32-generic-4mb"
BOARD_8MB = "esp32-generic-8mb"
FW_SIZE = 64 * 1024


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        return json.loads(self.body)


@dataclass
class Env:
    """A releases directory, a data directory and a signing key; servers stopped at the end."""

    tmp: Path
    firmware: Callable[..., Path]
    keypair: keys.KeyPair
    releases: Path
    data: Path
    handles: list[ServerHandle] = field(default_factory=list)

    def release(self, code: int, board: str | Path = BOARD, rid: str | None = None,
                expires: dt.datetime | None = None,
                keypair: keys.KeyPair | None = None) -> Path:
        out = self.releases / (rid or f"r{code}")
        key = keys.load_private((keypair or self.keypair).private)
        release.make_release(self.firmware(f"{code}.0.0"), out, board, f"{code}.0.0", code, key,
                             expires=expires)
        return out

    def serve(self, **kw: Any) -> ServerHandle:
        handle = start_server(self.releases, self.data, **kw)
        self.handles.append(handle)
        return handle

    def device(self, device_id: str = "dev-1", board: str | None = None) -> str:
        return add_device(self.data, device_id, board=board)


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> keys.KeyPair:
    return keys.generate(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def env(tmp_path: Path, firmware: Callable[..., Path], keypair: keys.KeyPair) -> Iterator[Env]:
    releases = tmp_path / "releases"
    releases.mkdir()
    environment = Env(tmp_path, firmware, keypair, releases, tmp_path / "data")
    yield environment
    for handle in environment.handles:
        handle.stop()


def request(handle: ServerHandle, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> Reply:
    context = ssl.create_default_context(cafile=str(handle.ca_pem))
    conn = http.client.HTTPSConnection("localhost", handle.port, context=context, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def auth(device_id: str, token: str) -> dict[str, str]:
    return {"X-Device-Id": device_id, "Authorization": f"Bearer {token}"}


def ask(handle: ServerHandle, token: str, version_code: int = 0, board: str = BOARD,
        device_id: str = "dev-1") -> Any:
    reply = request(handle, "GET", f"/v1/update?board={board}&version_code={version_code}",
                    headers=auth(device_id, token))
    assert reply.status == 200, reply.body
    return reply.json


def post_report(handle: ServerHandle, token: str, body: bytes, device_id: str = "dev-1") -> Reply:
    headers = dict(auth(device_id, token), **{"Content-Type": "application/json"})
    return request(handle, "POST", "/v1/report", body, headers)


# --- authentication -------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {},
    {"X-Device-Id": "dev-1"},
    {"X-Device-Id": "stranger", "Authorization": "Bearer {token}"},
    {"X-Device-Id": "dev-1", "Authorization": "Bearer wrong-token"},
    {"X-Device-Id": "dev-1", "Authorization": "Basic {token}"},
    {"X-Device-Id": "../dev-1", "Authorization": "Bearer {token}"},
], ids=["no-headers", "no-token", "unknown-device", "wrong-token", "not-bearer", "bad-id"])
def test_unauthorized_answers_are_identical(env: Env, headers: dict[str, str]) -> None:
    env.release(2)
    token = env.device()
    handle = env.serve()
    sent = {k: v.format(token=token) for k, v in headers.items()}
    for method, path, body in (("GET", f"/v1/update?board={BOARD}&version_code=0", None),
                               ("POST", "/v1/report", b'{"state": "idle"}')):
        reply = request(handle, method, path, body, sent)
        assert reply.status == 401
        assert reply.json == {"error": "unauthorized"}
    assert reports(env.data) == []


# --- /v1/update -------------------------------------------------------------------------------

def test_no_update_when_nothing_is_newer(env: Env) -> None:
    env.release(2)
    token = env.device()
    handle = env.serve(poll_after=120)
    assert ask(handle, token, version_code=2) == {"update": False, "poll_after": 120}
    assert ask(handle, token, version_code=7) == {"update": False, "poll_after": 120}


def test_update_carries_the_exact_manifest_and_signature(env: Env) -> None:
    reldir = env.release(3)
    token = env.device()
    handle = env.serve(url_ttl=600, poll_after=90)
    before = int(time.time())
    offer = ask(handle, token, version_code=1)
    assert offer["update"] is True
    assert (offer["release"], offer["version"], offer["version_code"]) == ("r3", "3.0.0", 3)
    assert base64.b64decode(offer["manifest"]) == (reldir / release.MANIFEST).read_bytes()
    signature = base64.b64decode(offer["signature"])
    assert signature == (reldir / release.SIGNATURE).read_bytes() and len(signature) == 64
    assert offer["payload_size"] == FW_SIZE and offer["poll_after"] == 90
    url = re.fullmatch(r"/v1/payload/r3\?device=dev-1&expires=(\d+)&sig=([0-9a-f]{64})",
                       offer["payload_url"])
    assert url is not None, offer["payload_url"]
    assert before + 600 <= int(url.group(1)) <= int(time.time()) + 600


def test_highest_version_code_wins(env: Env) -> None:
    for code in (2, 5, 3):
        env.release(code)
    token = env.device()
    handle = env.serve()
    assert ask(handle, token, version_code=0)["release"] == "r5"
    assert ask(handle, token, version_code=4)["release"] == "r5"
    assert ask(handle, token, version_code=5)["update"] is False


def test_only_releases_for_the_board_are_offered(env: Env) -> None:
    env.release(2)
    env.release(9, board=BOARD_8MB)
    free = env.device("dev-1")
    pinned = env.device("dev-4mb", board=BOARD)
    handle = env.serve()
    assert ask(handle, free, board=BOARD)["release"] == "r2"
    assert ask(handle, free, board="esp32-generic-8mb")["release"] == "r9"
    assert ask(handle, free, board="esp32-s3-other")["update"] is False
    # A registered board wins over the one the device reports.
    offer = ask(handle, pinned, board="esp32-generic-8mb", device_id="dev-4mb")
    assert offer["release"] == "r2"
    seen = {d["id"]: d for d in list_devices(env.data)}["dev-4mb"]
    assert seen["board"] == BOARD and seen["reported_board"] == "esp32-generic-8mb"
    assert seen["version_code"] == 0 and seen["last_seen"]


def test_expired_release_is_skipped(env: Env) -> None:
    env.release(2, expires=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30))
    env.release(3, expires=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1))
    token = env.device()
    handle = env.serve()
    assert ask(handle, token)["release"] == "r2"


def test_pubkey_skips_tampered_and_foreign_releases(env: Env, caplog: pytest.LogCaptureFixture,
                                                    keypair: keys.KeyPair) -> None:
    env.release(2)
    tampered = env.release(3)
    with (tampered / release.PAYLOAD).open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 1]))
    other = keys.generate(env.tmp / "other-keys")
    env.release(4, keypair=other)
    token = env.device()
    handle = env.serve(pubkey=keypair.public)
    assert ask(handle, token)["release"] == "r2"
    assert [r.id for r in handle.releases()] == ["r2"]
    warnings = {r.getMessage().split()[1]: r.getMessage() for r in caplog.records
                if r.levelname == "WARNING"}
    assert "payload hash" in warnings["r3"]
    assert "signature" in warnings["r4"] and "key id" in warnings["r4"]


def test_new_release_is_offered_without_restart(env: Env) -> None:
    env.release(2)
    token = env.device()
    handle = env.serve()
    assert ask(handle, token)["release"] == "r2"
    env.release(3)
    assert ask(handle, token)["release"] == "r3"
    os.rename(env.releases / "r3", env.tmp / "withdrawn")
    assert ask(handle, token)["release"] == "r2"


@pytest.mark.parametrize("query", [
    "", "board=esp32-generic-4mb", "version_code=1", "board=esp32-generic-4mb&version_code=x",
    "board=esp32-generic-4mb&version_code=-1", "board=esp32-generic-4mb&version_code=4294967296",
    "board=../x&version_code=1",
])
def test_bad_update_query_is_400(env: Env, query: str) -> None:
    token = env.device()
    handle = env.serve()
    reply = request(handle, "GET", f"/v1/update?{query}", headers=auth("dev-1", token))
    assert reply.status == 400 and "error" in reply.json


def test_newest_release_policy_is_a_pure_function() -> None:
    device = Device("d", None, (), "", None, None, None, None)
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)

    def fake(rid: str, board: str, code: int, expires: dt.datetime | None = None) -> Release:
        fields = {"board": board, "version": str(code), "version_code": code}
        return Release(rid, Path(rid), b"", b"", fields, Path(rid), 0, expires)

    releases = [fake("a", BOARD, 4), fake("b", BOARD, 6, now - dt.timedelta(seconds=1)),
                fake("c", "other", 9), fake("d", BOARD, 5)]
    chosen = newest_release(releases, UpdateQuery(device, BOARD, 1, now))
    assert chosen is not None and chosen.id == "d"
    assert newest_release(releases, UpdateQuery(device, BOARD, 5, now)) is None


# --- /v1/payload ------------------------------------------------------------------------------

@pytest.fixture
def offered(env: Env) -> tuple[ServerHandle, str, bytes]:
    """A server offering r2 to dev-1: (handle, payload URL, payload bytes)."""
    reldir = env.release(2)
    token = env.device()
    handle = env.serve()
    return handle, ask(handle, token)["payload_url"], (reldir / release.PAYLOAD).read_bytes()


def test_payload_whole(offered: tuple[ServerHandle, str, bytes]) -> None:
    handle, url, payload = offered
    reply = request(handle, "GET", url)
    assert reply.status == 200 and reply.body == payload
    assert reply.headers["Content-Length"] == str(len(payload))
    assert reply.headers["Content-Type"] == "application/octet-stream"
    head = request(handle, "HEAD", url)
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(payload))


@pytest.mark.parametrize(("rng", "start", "end"), [
    ("bytes=100-199", 100, 199), ("bytes=0-0", 0, 0), ("bytes=65000-", 65000, FW_SIZE - 1),
    ("bytes=60000-99999999", 60000, FW_SIZE - 1),
])
def test_payload_range(offered: tuple[ServerHandle, str, bytes], rng: str, start: int,
                       end: int) -> None:
    handle, url, payload = offered
    reply = request(handle, "GET", url, headers={"Range": rng})
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes {start}-{end}/{len(payload)}"
    assert reply.headers["Content-Length"] == str(end - start + 1)
    assert reply.body == payload[start:end + 1]


@pytest.mark.parametrize("rng", [f"bytes={FW_SIZE}-", "bytes=99999999-", "bytes=x-y"])
def test_payload_unsatisfiable_range_is_416(offered: tuple[ServerHandle, str, bytes],
                                            rng: str) -> None:
    handle, url, _ = offered
    reply = request(handle, "GET", url, headers={"Range": rng})
    assert reply.status == 416
    assert reply.headers["Content-Range"] == f"bytes */{FW_SIZE}"


def test_payload_never_serves_a_compressed_sibling(env: Env,
                                                   offered: tuple[ServerHandle, str, bytes]
                                                   ) -> None:
    handle, url, payload = offered
    (env.releases / "r2" / "payload.gz").write_bytes(b"not the payload")
    reply = request(handle, "GET", url, headers={"Accept-Encoding": "gzip, br"})
    assert reply.status == 200 and reply.body == payload
    assert "Content-Encoding" not in reply.headers


def _tamper(url: str, name: str, value: str | None) -> str:
    path, _, query = url.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    if name == "release":
        path = "/v1/payload/" + (value or "")
    elif value is None:
        del params[name]
    else:
        params[name] = value
    return path + "?" + "&".join(f"{k}={v}" for k, v in params.items())


@pytest.mark.parametrize(("name", "value"), [
    ("release", "r3"), ("device", "dev-2"), ("expires", "9999999999"), ("sig", "one-flipped"),
    ("sig", "0" * 64), ("sig", "zz"), ("sig", None), ("device", None), ("expires", None),
    ("expires", "-1"),
])
def test_payload_url_altered_is_403(env: Env, offered: tuple[ServerHandle, str, bytes],
                                    name: str, value: str | None) -> None:
    handle, url, _ = offered
    env.release(3)  # the altered names exist: only the signature stands in the way
    env.device("dev-2")
    if value == "one-flipped":
        sig = url.rsplit("=", 1)[1]
        value = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    reply = request(handle, "GET", _tamper(url, name, value))
    assert reply.status == 403 and reply.json["error"]
    assert request(handle, "GET", url).status == 200  # the genuine URL still works


def test_payload_url_expired_or_for_removed_device_is_403(env: Env,
                                                          offered: tuple[ServerHandle, str, bytes]
                                                          ) -> None:
    handle, url, _ = offered
    secret = load_secret(env.data)
    expired = PayloadUrls(secret, ttl=-1).make("r2", "dev-1", time.time())
    reply = request(handle, "GET", expired)
    assert reply.status == 403 and "expired" in reply.json["error"]
    remove_device(env.data, "dev-1")
    assert request(handle, "GET", url).status == 403


def test_unknown_release_with_valid_signature_is_404(env: Env,
                                                     offered: tuple[ServerHandle, str, bytes]
                                                     ) -> None:
    handle, _, _ = offered
    urls = PayloadUrls(load_secret(env.data), ttl=60)
    reply = request(handle, "GET", urls.make("r99", "dev-1", time.time()))
    assert reply.status == 404 and reply.json["error"]


@pytest.mark.parametrize(("path_id", "signed_id"), [
    ("..", ".."), ("%2e%2e", ".."), ("..%2fdata", "../data"), ("%2e%2e%2fr2", "../r2"),
    (".r2", ".r2"), ("r2%2f..%2f..%2fdata%2furl-secret", "r2/../../data/url-secret"),
])
def test_path_traversal_is_refused(env: Env, offered: tuple[ServerHandle, str, bytes],
                                   path_id: str, signed_id: str) -> None:
    handle, _, _ = offered
    # Even a correctly signed URL for such an id reaches no file.
    urls = PayloadUrls(load_secret(env.data), ttl=60)
    query = urls.make(signed_id, "dev-1", time.time()).partition("?")[2]
    reply = request(handle, "GET", f"/v1/payload/{path_id}?{query}")
    assert reply.status == 404 and reply.json["error"]
    unsigned = request(handle, "GET", "/v1/payload/../../data/url-secret")
    assert unsigned.status == 404 and unsigned.json["error"]


# --- /v1/report -------------------------------------------------------------------------------

def test_report_is_recorded_and_updates_the_device(env: Env) -> None:
    token = env.device()
    handle = env.serve()
    sent = {"state": "downloading", "version": "2.0.0", "version_code": 2,
            "target_version_code": 3, "detail": "50%", "offset": 32768, "future_field": [1]}
    reply = post_report(handle, token, json.dumps(sent).encode())
    assert reply.status == 200 and reply.json == {"ok": True}
    assert post_report(handle, token, b'{"state": "confirmed"}').status == 200
    first, second = reports(env.data)
    assert first["device"] == "dev-1" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                                                       first["time"])
    assert {k: first[k] for k in sent if k != "future_field"} == {
        k: v for k, v in sent.items() if k != "future_field"}
    assert second["state"] == "confirmed" and second["detail"] is None
    assert reports(env.data, "dev-1") == [first, second] and reports(env.data, "other") == []
    (device,) = list_devices(env.data)
    assert (device["state"], device["version_code"]) == ("confirmed", 2)
    assert device["last_seen"] == second["time"]


def test_oversize_report_is_413(env: Env) -> None:
    token = env.device()
    handle = env.serve()
    body = json.dumps({"state": "x", "pad": "p" * 4100}).encode()
    reply = post_report(handle, token, body)
    assert reply.status == 413 and reply.json["error"]
    assert reports(env.data) == []


@pytest.mark.parametrize("body", [
    b"{not json", b"\xff\xfe", b"[]", b"{}", b'{"state": ""}', b'{"state": 1}',
    b'{"state": "x' + b"s" * 32 + b'"}', b'{"state": "ok", "version_code": "2"}',
    b'{"state": "ok", "version_code": true}', b'{"state": "ok", "detail": "' + b"d" * 513 + b'"}',
    b'{"state": "ok", "offset": 1.5}', b'{"state": "ok", "version_code": 99999999999999999999}',
])
def test_malformed_report_is_400(env: Env, body: bytes) -> None:
    token = env.device()
    handle = env.serve()
    reply = post_report(handle, token, body)
    assert reply.status == 400 and reply.json["error"]
    assert reports(env.data) == []


# --- the rest of HTTP, TLS, and the runner ----------------------------------------------------

def test_unknown_route_and_method_answer_json(env: Env) -> None:
    handle = env.serve()
    reply = request(handle, "GET", "/v2/update")
    assert reply.status == 404 and reply.json["error"]
    reply = request(handle, "DELETE", "/v1/report")
    assert reply.status == 405 and reply.json["error"] and "POST" in reply.headers["Allow"]


def test_client_that_does_not_trust_the_ca_fails_the_handshake(env: Env) -> None:
    handle = env.serve()
    stranger = devtls.create(env.tmp / "other-ca")
    context = ssl.create_default_context(cafile=str(stranger.ca_pem))
    conn = http.client.HTTPSConnection("localhost", handle.port, context=context, timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/v1/update")
    conn.close()
    assert handle.ca_der.read_bytes() == (env.data / "tls" / "ca.der").read_bytes()


def test_handle_reports_port_and_stops(env: Env) -> None:
    with env.serve() as handle:
        assert handle.port > 0 and handle.url == f"https://localhost:{handle.port}"
        assert request(handle, "GET", "/nowhere").status == 404
    handle.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        request(handle, "GET", "/nowhere")


def test_start_server_with_own_certificate(env: Env) -> None:
    own = devtls.create(env.tmp / "own", ca_name="Example Corp CA")
    chain = env.tmp / "chain.pem"  # leaf first, CA last: ca_der is the last one
    chain.write_bytes(own.cert.read_bytes() + own.ca_pem.read_bytes())
    handle = env.serve(cert=chain, key=own.key)
    assert handle.ca_der.read_bytes() == own.ca_der.read_bytes()
    assert request(dataclasses.replace(handle, ca_pem=own.ca_pem), "GET", "/").status == 404


def test_start_server_errors(env: Env) -> None:
    with pytest.raises(ServerError, match="does not exist"):
        start_server(env.tmp / "missing", env.data)
    with pytest.raises(ServerError, match="both a certificate and its key"):
        start_server(env.releases, env.data, cert=env.tmp / "cert.pem")
    with env.serve() as handle, pytest.raises(ServerError, match="another --host or --port"):
        start_server(env.releases, env.data, port=handle.port)


def test_device_registry(env: Env) -> None:
    token = add_device(env.data, "dev-1", board=BOARD, tags=("canary", "site:lab"))
    assert len(token) == 32 and token not in (env.data / "mpota.db").read_bytes().decode("latin-1")
    with pytest.raises(DeviceError, match="already registered"):
        add_device(env.data, "dev-1")
    with pytest.raises(DeviceError, match="not 1-64 characters"):
        add_device(env.data, "../evil")
    with pytest.raises(DeviceError, match=r"unknown board 'esp32-foo'; known: .*esp32-s3-"):
        add_device(env.data, "dev-9", board="esp32-foo")
    handle = env.serve()
    new = add_device(env.data, "dev-1", replace=True)
    assert request(handle, "GET", f"/v1/update?board={BOARD}&version_code=0",
                   headers=auth("dev-1", token)).status == 401
    assert ask(handle, new)["update"] is False
    remove_device(env.data, "dev-1")
    assert list_devices(env.data) == []
    with pytest.raises(DeviceError, match="no device"):
        remove_device(env.data, "dev-1")
    with pytest.raises(DeviceError, match="no server database"):
        list_devices(env.tmp / "mistyped")
    assert not (env.tmp / "mistyped").exists()
    secret = env.data / "url-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32


# --- the command line -------------------------------------------------------------------------

def mpota(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([tool("mpota"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"mpota {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_cli_device_add_prints_a_token_that_authenticates(env: Env) -> None:
    out = mpota("device", "add", "dev-1", "--data", str(env.data), "--tag", "canary",
                cwd=env.tmp).stdout
    token = re.search(r"^token: (\S+)$", out, re.M)
    assert token is not None and "cannot be shown again" in out
    with env.serve() as handle:
        assert ask(handle, token.group(1))["update"] is False
    again = mpota("device", "add", "dev-1", "--data", str(env.data), cwd=env.tmp, check=False)
    assert again.returncode == 1
    assert "mpota: error: device 'dev-1' is already registered" in again.stderr
    listed = json.loads(mpota("device", "list", "--data", str(env.data), "--json",
                              cwd=env.tmp).stdout)
    assert [(d["id"], d["tags"]) for d in listed] == [("dev-1", ["canary"])]


def test_cli_reports_table(env: Env) -> None:
    token = env.device()
    with env.serve() as handle:
        post_report(handle, token, b'{"state": "failed", "version_code": 3, "detail": "hash"}')
    out = mpota("reports", "--data", str(env.data), cwd=env.tmp).stdout
    assert re.search(r"^\S+Z\s+dev-1\s+failed\s+3\s+hash$", out, re.M), out
    rows = json.loads(mpota("reports", "--data", str(env.data), "--device", "dev-1", "--json",
                            cwd=env.tmp).stdout)
    assert [r["state"] for r in rows] == ["failed"]


def test_cli_serve_refuses_to_run_without_tls(env: Env) -> None:
    proc = mpota("serve", "--releases", str(env.releases), "--data", str(env.data),
                 cwd=env.tmp, check=False)
    assert proc.returncode == 2
    assert "give --dev" in proc.stderr and "--cert FILE --key FILE" in proc.stderr
    assert not (env.data / "mpota.db").exists()


def _serving_line(proc: subprocess.Popen[str]) -> str:
    """The server's "mpota: serving ..." line (after what it says about a new dev CA)."""
    assert proc.stdout is not None
    line = ""
    for _ in range(20):
        line = proc.stdout.readline()
        if not line or line.startswith("mpota: serving"):
            break
    return line


def test_cli_serve_dev(env: Env) -> None:
    env.release(2)
    token = env.device()
    proc = subprocess.Popen([tool("mpota"), "serve", "--releases", str(env.releases), "--data",
                             str(env.data), "--dev", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, proc.kill)  # a server that never prints must not hang pytest
    watchdog.start()
    try:
        line = _serving_line(proc)
        found = re.fullmatch(r"mpota: serving 1 releases on https://127\.0\.0\.1:(\d+) "
                             r"\(devices pin CA: (.+)\)\n", line)
        assert found is not None, line + proc.stderr.read() if proc.stderr else line
        assert Path(found.group(2)) == env.data / "tls" / "ca.der"
        handle = ServerHandle(f"https://localhost:{found.group(1)}", int(found.group(1)),
                              env.data / "tls" / "ca.der", env.data / "tls" / "ca.pem", env.data)
        assert ask(handle, token)["release"] == "r2"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        watchdog.cancel()
    assert proc.returncode == 0, err
    assert "server stopped" in out


# --- issue 9: hardening ----------------------------------------------------------------------

def _bad_release(env: Env, rid: str, raw: bytes, sign: bool = True) -> None:
    """A release directory holding ``raw`` as its manifest (signed with the test key)."""
    out = env.releases / rid
    out.mkdir()
    key = keys.load_private(env.keypair.private)
    (out / release.MANIFEST).write_bytes(raw)
    (out / release.SIGNATURE).write_bytes(keys.sign(key, raw) if sign else b"\0" * 64)
    (out / release.PAYLOAD).write_bytes(b"\xa5" * 4096)


@pytest.mark.parametrize("pubkey", [False, True])
def test_a_bad_release_is_skipped_and_never_breaks_the_server(
        env: Env, caplog: pytest.LogCaptureFixture, pubkey: bool) -> None:
    good = env.release(2)
    fields = json.loads((good / release.MANIFEST).read_bytes())

    def variant(**changes: Any) -> bytes:
        return release.encode_manifest(dict(fields, version_code=9, **changes))

    _bad_release(env, "nested", b'{"a": ' * 700 + b"1" + b"}" * 700)
    _bad_release(env, "arrays", b"[" * 2000 + b"]" * 2000)
    _bad_release(env, "overflow", variant(expires="999999999d"))
    _bad_release(env, "february", variant(expires="2030-02-30T00:00:00Z"))
    _bad_release(env, "trailing", variant() + b"\0")
    _bad_release(env, "garbage", b"\xff\xfe\x1b[31m not a manifest")
    _bad_release(env, "empty", variant(size=0, payload_size=0))
    (env.releases / "dir-payload").mkdir()
    for name in (release.MANIFEST, release.SIGNATURE):
        (env.releases / "dir-payload" / name).write_bytes((good / name).read_bytes())
    (env.releases / "dir-payload" / release.PAYLOAD).mkdir()
    token = env.device()
    handle = env.serve(pubkey=env.keypair.public if pubkey else None)
    assert [r.id for r in handle.releases()] == ["r2"]
    assert ask(handle, token)["release"] == "r2"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for rid in ("nested", "arrays", "overflow", "february", "trailing", "garbage", "empty",
                "dir-payload"):
        (line,) = [w for w in warned if w.startswith(f"release {rid} skipped")]
        assert "\n" not in line and "\x1b" not in line, line


@pytest.mark.parametrize("body", [
    b"[" * 2000 + b"]" * 2000,
    b'[{"state": "ok"}, ' + b"[" * 1500 + b"]" * 1500 + b"]",
    b'{"state": "ok", "detail": ' + b"[" * 1900 + b"]" * 1900 + b"}",
])
def test_a_deeply_nested_report_is_400(env: Env, body: bytes) -> None:
    # deeper than Python's recursion limit: json.loads raised RecursionError, a 500
    token = env.device()
    handle = env.serve()
    reply = post_report(handle, token, body)
    assert reply.status == 400 and "nested too deeply" in reply.json["error"]


@pytest.mark.parametrize("headers", [
    {"Range": "bytes=abc"}, {"Range": "bytes=5-1"}, {"Range": "bytes=0-1,2-3"},
    {"Range": "bytes=99999999999999999999999999-"}, {"Range": "bytes=-0"}, {"Range": "lines=1-2"},
    {"If-Range": "garbage"}, {"If-Modified-Since": "not a date"},
    {"If-Unmodified-Since": "Mon, 99 Foo 99999 99:99:99 GMT"}, {"Accept-Encoding": "gzip;q=x"},
    {"X-Long": "a" * 5000}, {f"X-Many-{i}": "x" for i in range(40)},
])
def test_odd_request_headers_never_make_a_500(offered: tuple[ServerHandle, str, bytes],
                                              headers: dict[str, str]) -> None:
    handle, url, _ = offered
    reply = request(handle, "GET", url, headers=headers)
    assert reply.status < 500, (reply.status, reply.body[:200])


def test_a_release_needing_an_intermediate_version_is_not_offered_yet() -> None:
    # r3 needs version_code 2 installed first: a device on 1 gets r2, then r3.
    device = Device("d", None, (), "", None, None, None, None)
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)

    def fake(rid: str, code: int, minimum: int | None) -> Release:
        fields = {"board": BOARD, "version": str(code), "version_code": code,
                  "min_version_code": minimum}
        return Release(rid, Path(rid), b"", b"", fields, Path(rid), 0, None)

    releases = [fake("r2", 2, None), fake("r3", 3, 2), fake("r4", 4, 3)]
    offered = [newest_release(releases, UpdateQuery(device, BOARD, code, now))
               for code in (0, 1, 2, 3, 4)]
    assert [r.id if r else None for r in offered] == ["r2", "r2", "r3", "r4", None]


def test_a_release_expires_after_its_last_second(env: Env) -> None:
    # as on the device: a release is valid up to and including its expiry second
    device = Device("d", None, (), "", None, None, None, None)
    when = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    fields = {"board": BOARD, "version": "2", "version_code": 2}
    rel = Release("r2", Path("r2"), b"", b"", fields, Path("r2"), 0, when)
    assert newest_release([rel], UpdateQuery(device, BOARD, 1, when)) is rel
    later = when + dt.timedelta(seconds=1)
    assert newest_release([rel], UpdateQuery(device, BOARD, 1, later)) is None


def test_cli_escapes_what_devices_sent(env: Env) -> None:
    token = env.device()
    evil = "\x1b[2J\x1b]0;owned\x07\u202e"
    with env.serve() as handle:
        body = json.dumps({"state": "failed" + evil, "detail": "bad\r\nfake line" + evil,
                           "version": "1\x1b[31m"}).encode()
        assert post_report(handle, token, body).status == 200
    out = mpota("reports", "--data", str(env.data), cwd=env.tmp).stdout
    assert "\x1b" not in out and "\u202e" not in out and "\r" not in out
    assert "failed\\x1b[2J\\x1b]0;owned\\x07\\u202e" in out
    assert "bad\\r\\nfake line" in out and len(out.splitlines()) == 2
    listed = mpota("device", "list", "--data", str(env.data), cwd=env.tmp).stdout
    assert "\x1b" not in listed and "failed\\x1b[2J" in listed


# --- issue 10: the offer as the server's record, durability of acknowledged reports ---------

def test_an_offer_is_recorded_as_an_update_in_progress(env: Env) -> None:
    env.release(2)
    token = env.device()
    handle = env.serve()
    assert ask(handle, token, version_code=2)["update"] is False  # nothing offered: no record
    (device,) = list_devices(env.data)
    assert (device["state"], device["offered_release"], device["offered_at"]) == (None,) * 3
    assert ask(handle, token, version_code=1)["release"] == "r2"
    (device,) = list_devices(env.data)
    assert (device["state"], device["version_code"]) == ("OFFERED", 1)
    assert (device["offered_release"], device["offered_version_code"]) == ("r2", 2)
    first = device["offered_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first)
    assert reports(env.data) == []  # reports are what devices sent
    # a device that reports and is offered the same release again (a resume,
    # or one that refuses it) keeps its reported state and the first offer's time
    assert post_report(handle, token, b'{"state": "INTERRUPTED", "version_code": 1}').status == 200
    time.sleep(1.1)  # stamps have one-second resolution
    assert ask(handle, token, version_code=1)["release"] == "r2"
    (device,) = list_devices(env.data)
    assert (device["state"], device["offered_release"]) == ("INTERRUPTED", "r2")
    assert device["offered_at"] == first and device["last_seen"] > first
    # a DOWNLOADING report from an older agent is still accepted and recorded
    assert post_report(handle, token, b'{"state": "DOWNLOADING", "version_code": 1, '
                                      b'"target_version_code": 2}').status == 200
    assert list_devices(env.data)[0]["state"] == "DOWNLOADING"
    assert [r["state"] for r in reports(env.data)] == ["INTERRUPTED", "DOWNLOADING"]
    # a newer release is a new offer
    env.release(3)
    assert ask(handle, token, version_code=1)["release"] == "r3"
    (device,) = list_devices(env.data)
    assert (device["state"], device["offered_release"], device["offered_version_code"]) == (
        "OFFERED", "r3", 3)
    assert device["offered_at"] > first


def test_a_database_from_before_the_offer_columns_is_upgraded(env: Env) -> None:
    import sqlite3

    env.data.mkdir(mode=0o700)
    with sqlite3.connect(env.data / "mpota.db") as db:  # the schema as issue 9 left it
        db.executescript("CREATE TABLE devices (id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, "
                         "board TEXT, tags TEXT NOT NULL DEFAULT '[]', created TEXT NOT NULL, "
                         "last_seen TEXT, state TEXT, version_code INTEGER, reported_board TEXT);")
    db.close()
    env.release(2)
    token = env.device()
    assert ask(env.serve(), token, version_code=1)["release"] == "r2"
    assert list_devices(env.data)[0]["offered_release"] == "r2"


def test_an_acknowledged_report_survives_a_killed_server(env: Env) -> None:
    # WAL + synchronous=NORMAL: the commit is in the WAL file before the 200 goes out
    token = env.device()
    proc = subprocess.Popen([tool("mpota"), "serve", "--releases", str(env.releases), "--data",
                             str(env.data), "--dev", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        found = re.search(r"127\.0\.0\.1:(\d+) ", _serving_line(proc))
        assert found is not None
        handle = ServerHandle(f"https://localhost:{found.group(1)}", int(found.group(1)),
                              env.data / "tls" / "ca.der", env.data / "tls" / "ca.pem", env.data)
        for n in range(5):
            body = json.dumps({"state": "STAGED", "version_code": 1, "detail": f"r{n}"})
            assert post_report(handle, token, body.encode()).status == 200
        proc.kill()  # SIGKILL: no shutdown, no checkpoint
        proc.communicate(timeout=10)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == -9
    assert [r["detail"] for r in reports(env.data)] == [f"r{n}" for n in range(5)]
    assert list_devices(env.data)[0]["state"] == "STAGED"
