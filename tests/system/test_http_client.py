"""The device HTTP client (mpota.http, mpota.fetch, mpota.ca) on the
MicroPython unix port against small HTTPS servers on 127.0.0.1: what real web
servers and CDNs send, and how each failure is classified."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import unix_results
from mpota_host import devtls
from netfaults import (
    FaultProxy,
    HandshakeFault,
    Reply,
    Request,
    ScriptedHTTPS,
    ranged,
    reply,
)


@dataclass(frozen=True)
class Certs:
    good: devtls.DevTLS  # localhost and 127.0.0.1, signed by the CA devices pin
    other: devtls.DevTLS  # another CA altogether
    wrong_name: devtls.DevTLS  # for updates.example.com only


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("tls")
    return Certs(devtls.create(root / "good"), devtls.create(root / "other", ca_name="other CA"),
                 devtls.create(root / "wrong", hostnames=("updates.example.com",)))


@pytest.fixture
def serve(certs: Certs) -> Iterator[object]:
    """serve(route) -> a ScriptedHTTPS with the good certificate, closed after the test."""
    servers: list[ScriptedHTTPS] = []

    def start(route: object, tls: devtls.DevTLS | None = None) -> ScriptedHTTPS:
        t = tls or certs.good
        server = ScriptedHTTPS(t.cert, t.key, route)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


_driver = ["blocking"]


@pytest.fixture(autouse=True, params=["blocking", "asyncio"])
def driver(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs twice: the blocking agent's client (blocking sockets,
    mpota.drive) and the asyncio agent's (non-blocking sockets, the TLS
    handshake inside the first write, mpota.aio.drive beside a ticking task)."""
    _driver[0] = request.param
    yield request.param
    _driver[0] = "blocking"


def snippet(ca: Path, code: str) -> list[object]:
    """Run code on the unix port with a client library prelude; its RESULTs."""
    nb = _driver[0] == "asyncio"
    return unix_results(f"""
import mpota
from mpota import http
from mpota import ca, fetch
from mpota.errors import OTAError
import hashlib, binascii
CAS = ca.certs(open({str(ca)!r}, "rb").read())
NB = {nb!r}

class Agent:
    # what the drivers read of the agent: the stall (the last client's) and the busy check
    cfg = {{"download": {{"stall_s": 10}}}}
    busy = None

def Client(url, cas, stall=10, hops=3):
    Agent.cfg["download"]["stall_s"] = stall
    if NB:  # the asyncio agent's: TLS on mpota.aio.Records (the handshake in steps)
        from mpota import aio
        return http.Client(url, cas, stall, hops, aio.Records)
    return http.Client(url, cas, stall, hops, False)

def drive(gen):
    if not NB:
        return mpota.drive(gen, Agent)
    import asyncio
    from mpota import aio

    async def ticker():
        while True:
            await asyncio.sleep_ms(1)

    async def main():
        t = asyncio.create_task(ticker())
        try:
            return await aio.drive(gen, Agent)
        finally:
            t.cancel()

    return asyncio.run(main())

def outcome(f, *a):
    try:
        return ["ok", f(*a)]
    except OTAError as e:
        return [type(e).__name__, e.retryable, str(e)]

def get(c, target, limit=65536):
    c.expect(drive(c.request("GET", target)), 200)
    return drive(c.read_all(limit)).decode()

class Sink:
    # stands in for the SlotWriter: whole 4096-byte blocks are kept, a
    # partial one is lost after a drop
    def __init__(self, total):
        self.total = total
        self.committed = self.fill = 0
        self.data = bytearray(total)
        self.buf = memoryview(bytearray(4096))
    @property
    def offset(self):
        return self.committed + self.fill
    def iv_needed(self):
        return 0
    def drop_partial(self):
        self.fill = 0
    def pull(self, r, count):
        assert self.offset + count <= self.total
        while count:
            n = r.readinto(self.buf[self.fill:min(4096, self.fill + count)])
            if n is None:
                yield from r.wait()
                continue
            if not n:
                raise OSError("short")
            self.fill += n
            count -= n
            if self.fill == 4096 or self.offset == self.total:
                self.data[self.committed:self.offset] = self.buf[:self.fill]
                self.committed += self.fill
                self.fill = 0
    def skip(self, r, count):
        while count:
            n = r.readinto(self.buf[:min(4096, count)])
            if n is None:
                yield from r.wait()
                continue
            count -= n

OPTS = {{"window": 8192, "retries": 2, "backoff_ms": 1, "backoff_max_ms": 2}}

def download(c, url, size, **opts):
    sink = Sink(size)
    o = dict(OPTS, **opts)
    def run():
        drive(fetch.download(c, url, sink, o))
        return binascii.hexlify(hashlib.sha256(sink.data).digest()).decode()
    return outcome(run)
{code}
""")


PAYLOAD = os.urandom(100_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def test_ca_bundle_pem_and_der_and_each_ca_is_trusted(certs: Certs, serve, tmp_path: Path) -> None:
    server = serve(lambda req: reply(200, b"hello"))
    pem = tmp_path / "bundle.pem"  # the server's CA second in the bundle
    pem.write_bytes(certs.other.ca_pem.read_bytes() + b"\n" + certs.good.ca_pem.read_bytes())
    der = tmp_path / "bundle.der"
    der.write_bytes(certs.good.ca_der.read_bytes() + certs.other.ca_der.read_bytes())
    junk = tmp_path / "junk.der"
    junk.write_bytes(b"\x30\x82\x01")
    out = snippet(pem, f"""
result(len(CAS))
result(get(Client({server.url!r}, CAS), "/"))
result(get(Client({server.url!r}, ca.certs(open({str(der)!r}, "rb").read())), "/"))
result(get(Client({server.url!r}, open({str(certs.good.ca_der)!r}, "rb").read()), "/"))
for bad in (open({str(junk)!r}, "rb").read(), b"", b"-----BEGIN CERTIFICATE-----\\nAAAA\\n"):
    try:
        ca.certs(bad)
    except ValueError as e:
        result(str(e))
""")
    assert out[:4] == [2, "hello", "hello", "hello"]
    assert out[4:] == ["bad DER length at byte 0", "no certificate in it",
                       "PEM certificate without its END line"]


def test_request_head_names_the_port_and_asks_for_identity(certs: Certs, serve) -> None:
    server = serve(lambda req: reply(200, b"{}"))
    snippet(certs.good.ca_der, f"""
c = Client({server.url + "/api/"!r}, CAS)
result(get(c, "/v1/update?board=x"))
""")
    (request,) = server.requests
    assert request.path == "/api/v1/update?board=x"
    assert request.headers["host"] == f"localhost:{server.port}"
    assert request.headers["accept-encoding"] == "identity"


def test_long_header_lines_are_skipped_and_the_total_is_bounded(certs: Certs, serve) -> None:
    csp = ("Content-Security-Policy", "default-src 'self'; " * 150)  # 3000 bytes
    cookie = ("Set-Cookie", "session=" + "x" * 700)
    long_target = "/signed/payload?" + "q" * 1500  # a signed CDN URL in a long Location

    def route(req: Request) -> Reply:
        if req.path == "/moved":
            return reply(302, headers=(("Location", long_target), csp))
        if req.path == "/huge":
            return reply(200, b"no", tuple(("X-Filler", "f" * 1000) for _ in range(9)))
        return reply(200, req.path[:8].encode(), (csp, cookie))

    server = serve(route)
    out = snippet(certs.good.ca_der, f"""
c = Client({server.url!r}, CAS)
result(get(c, "/page"))
result(get(c, "/moved"))
result(outcome(get, c, "/huge"))
result(get(c, "/again"))
""")
    assert out[:2] == ["/page", "/signed/"]
    assert out[2][:2] == ["DownloadError", False]
    assert out[2][2] == f"bad HTTP answer from https://localhost:{server.port}/huge"
    assert out[3] == "/again"
    assert server.requests[2].path == long_target
    # one connection for the first three requests; not reused after headers left half-read
    assert server.handshakes == 2


def test_malformed_answers_are_one_clear_refusal(certs: Certs, serve) -> None:
    raw = {
        "/garbage": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        "/status": b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n",
        "/length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
        "/words": b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        "/utf8": b"HTTP/1.1 302 Found\r\nLocation: /\xff\xfe\r\nContent-Length: 0\r\n\r\n",
        # a line without a colon and an unknown header are skipped
        "/odd": b"HTTP/1.1 200 OK\r\nno colon here\r\nX-A: \xff\r\nContent-Length: 2\r\n\r\nok",
    }
    server = serve(lambda req: (raw[req.path], True))
    out = snippet(certs.good.ca_der, f"""
c = Client({server.url!r}, CAS)
for path in {list(raw)!r}:
    result(outcome(get, c, path))
""")
    for path, got in zip(list(raw)[:-1], out[:-1], strict=True):
        assert got == ["DownloadError", False, f"bad HTTP answer from {server.url}{path}"]
    assert out[-1] == ["ok", "ok"]


def test_certificate_failures_are_permanent_cut_handshakes_are_retried(certs: Certs,
                                                                       serve) -> None:
    good = serve(lambda req: reply(200, b"ok"))
    wrong_name = serve(lambda req: reply(200, b"ok"), certs.wrong_name)
    with HandshakeFault("close") as closing, HandshakeFault("stall") as stalling:
        out = snippet(certs.good.ca_der, f"""
other = ca.certs(open({str(certs.other.ca_der)!r}, "rb").read())
result(outcome(get, Client(None, other, 1), {good.url + "/"!r}))
wrong = ca.certs(open({str(certs.wrong_name.ca_der)!r}, "rb").read())
result(outcome(get, Client(None, wrong, 1), {wrong_name.url + "/"!r}))
result(outcome(get, Client(None, CAS, 1), "https://localhost:{closing.port}/"))
result(outcome(get, Client(None, CAS, 1), "https://localhost:{stalling.port}/"))
result(outcome(get, Client(None, [], 1), {good.url + "/"!r}))
""")
    port = good.port
    assert out[0] == ["TLSError", False, f"localhost:{port} is not trusted: The certificate is "
                      "not correctly signed by the trusted CA"]
    assert out[1][:2] == ["TLSError", False]
    assert f"localhost:{wrong_name.port} is not trusted: The certificate Common Name (CN) " \
           "does not match with the expected CN" in out[1][2]
    assert out[2][:2] == ["TransportError", True]
    assert f"TLS handshake failed with localhost:{closing.port}:" in out[2][2]
    assert out[3] == ["TransportError", True,
                      f"TLS handshake failed with localhost:{stalling.port}: [Errno 110] ETIMEDOUT"]
    assert out[4][:2] == ["ConfigError", False]
    assert good.requests == [] and wrong_name.requests == []


def test_redirect_to_another_origin_is_remembered_on_one_connection(certs: Certs,
                                                                    serve) -> None:
    cdn = serve(lambda req: ranged(PAYLOAD, req))
    origin = serve(lambda req: reply(302, b"<a>moved</a>", (
        ("Location", f"{cdn.url}/blob?sig=SECRET"),)))
    out = snippet(certs.good.ca_der, f"""
c = Client(None, CAS)
result(download(c, {origin.url + "/rel/payload"!r}, {len(PAYLOAD)}))
""")
    assert out == [["ok", DIGEST]]
    assert (origin.handshakes, len(origin.requests)) == (1, 1)
    assert (cdn.handshakes, len(cdn.requests)) == (1, 1)
    assert cdn.requests[0].path == "/blob?sig=SECRET"
    assert cdn.requests[0].headers["range"] == "bytes=0-"


def test_expired_redirect_target_goes_back_to_the_original_url(certs: Certs, serve) -> None:
    def cdn_route(req: Request) -> Reply:
        if req.path.endswith("sig=1"):
            if len(cdn.requests) == 1:
                return ranged(PAYLOAD, req, keep=30_000)  # a drop in the body
            return reply(403, b"<Error>Request has expired</Error>")
        return ranged(PAYLOAD, req)

    cdn = serve(cdn_route)
    origin = serve(lambda req: reply(302, b"", (
        ("Location", f"{cdn.url}/blob?sig={len(origin.requests)}"),)))
    out = snippet(certs.good.ca_der, f"""
c = Client(None, CAS)
result(download(c, {origin.url + "/rel/payload"!r}, {len(PAYLOAD)}))
""")
    assert out == [["ok", DIGEST]]
    assert len(origin.requests) == 2
    # the resume asks the kept target first, at the last whole block; it has
    # expired, so the original URL is asked again for a fresh one
    assert [(r.path, r.headers["range"]) for r in cdn.requests] == [
        ("/blob?sig=1", "bytes=0-"), ("/blob?sig=1", "bytes=28672-"),
        ("/blob?sig=2", "bytes=28672-")]


def test_redirect_target_that_stops_answering_is_forgotten(certs: Certs, serve) -> None:
    def first_cdn(req: Request) -> Reply:
        dead.refusing = True
        return ranged(PAYLOAD, req, keep=50_000)  # drops, then refuses connections

    dead = serve(first_cdn)
    alive = serve(lambda req: ranged(PAYLOAD, req))
    origin = serve(lambda req: reply(302, b"", (
        ("Location", f"{(dead if len(origin.requests) == 1 else alive).url}/blob"),)))
    out = snippet(certs.good.ca_der, f"""
c = Client(None, CAS)
result(download(c, {origin.url + "/rel/payload"!r}, {len(PAYLOAD)}))
""")
    assert out == [["ok", DIGEST]]
    assert len(origin.requests) == 2
    assert [r.headers["range"] for r in dead.requests] == ["bytes=0-"]
    assert [r.headers["range"] for r in alive.requests] == ["bytes=49152-"]


def test_same_origin_redirect_keeps_the_connection(certs: Certs, serve) -> None:
    def route(req: Request) -> Reply:
        if req.path == "/latest/payload":
            return reply(301, b"Moved Permanently", (("Location", "../v2/payload"),))
        return ranged(PAYLOAD, req)

    server = serve(route)
    out = snippet(certs.good.ca_der, f"""
c = Client({server.url!r}, CAS)
result(download(c, "/latest/payload", {len(PAYLOAD)}))
""")
    assert out == [["ok", DIGEST]]
    assert server.handshakes == 1
    assert [r.path for r in server.requests] == ["/latest/payload", "/v2/payload"]


def test_bodies_encodings_and_error_messages(certs: Certs, serve) -> None:
    routes = {
        "/gzip": reply(200, b"\x1f\x8b", (("Content-Encoding", "gzip"),)),
        "/chunked": reply(200, b"2\r\nok\r\n0\r\n\r\n", (("Transfer-Encoding", "chunked"),),
                          length=False),
        "/close": reply(200, b'{"a": 1}', close=True, length=False),
        "/http10": reply(200, b'{"b": 2}', close=True, length=False, version="HTTP/1.0"),
        "/big": reply(200, b"x" * 100, close=True, length=False),
    }
    server = serve(lambda req: routes.get(req.path.split("?")[0], reply(404, b"nope")))
    out = snippet(certs.good.ca_der, f"""
c = Client({server.url!r}, CAS)
for path in ("/gzip", "/chunked", "/close", "/http10", "/big", "/x?X-Amz-Signature=SECRET"):
    result(outcome(get, c, path, 64))
""")
    url = server.url
    assert out[0] == ["DownloadError", False,
                      f"{url}/gzip is sent with Content-Encoding gzip: serve it as is, "
                      "with a Content-Length"]
    assert out[1] == ["DownloadError", False,
                      f"{url}/chunked is sent with Transfer-Encoding chunked: serve it as is, "
                      "with a Content-Length"]
    assert out[2:4] == [["ok", '{"a": 1}'], ["ok", '{"b": 2}']]
    assert out[4] == ["DownloadError", False, f"{url}/big: over the 64 bytes accepted"]
    assert out[5] == ["DownloadError", False, f"HTTP 404 ({url}/x?...)"]
    assert all(r.headers["accept-encoding"] == "identity" for r in server.requests)


def test_download_failures_are_classified(certs: Certs, serve) -> None:
    def route(req: Request) -> Reply:
        if req.path == "/range":
            return reply(206, PAYLOAD[:10], (("Content-Range", f"bytes 0-9/{len(PAYLOAD) + 1}"),))
        if req.path == "/busy":
            return reply(503, b"try later")
        if req.path == "/insecure":
            return reply(302, headers=(("Location", "http://localhost/payload"),))
        if req.path.startswith("/loop"):
            return reply(307, headers=(("Location", req.path + "x"),))
        if req.path == "/gone":
            return reply(410, b"")
        return ranged(PAYLOAD, req)

    server = serve(route)
    out = snippet(certs.good.ca_der, f"""
c = Client({server.url!r}, CAS)
for path in ("/range", "/busy", "/insecure", "/loop", "/gone", "/ok"):
    result(download(c, path, {len(PAYLOAD)}))
result(outcome(get, Client(None, CAS), "/relative"))
""")
    paths = [r.path for r in server.requests]
    assert out[0] == ["DownloadError", False, f"{server.url}/range sent Content-Range "
                      "'bytes 0-9/100001' (Content-Length 10) for bytes=0- of 100000"]
    assert paths.count("/range") == 1  # not retried
    assert out[1][:2] == ["TransportError", True]
    assert out[1][2].startswith("download failed 3 times in a row, last: HTTP 503")
    assert paths.count("/busy") == 3
    assert out[2] == ["DownloadError", False, "not an https:// URL: http://localhost/payload"]
    assert out[3][:2] == ["DownloadError", False]
    assert out[3][2].startswith(f"more than 3 redirects from {server.url}/loop")
    assert out[4][:2] == ["DownloadError", False] and "HTTP 410" in out[4][2]
    assert out[5] == ["ok", DIGEST]
    assert out[6] == ["DownloadError", False, "not an https:// URL: /relative"]


def test_dropped_connections_are_resumed(certs: Certs, serve) -> None:
    server = serve(lambda req: ranged(PAYLOAD, req))
    with FaultProxy(server.port, cuts=[3000, 30_000, None]) as proxy:
        out = snippet(certs.good.ca_der, f"""
c = Client("https://localhost:{proxy.port}", CAS)
result(download(c, "/payload", {len(PAYLOAD)}))
""")
    assert out == [["ok", DIGEST]]
    assert proxy.cut_count == 2 and proxy.connections == 3
    # each new connection asks once, from the last whole block on
    ranges = [r.headers["range"] for r in server.requests]
    assert len(ranges) <= 3 and ranges[-1] != "bytes=0-", ranges
    assert all(int(r[6:-1]) % 4096 == 0 for r in ranges), ranges


def test_one_handshake_one_payload_request_and_reports_on_it(certs: Certs, serve) -> None:
    def route(req: Request) -> Reply:
        if req.path == "/payload":
            return ranged(PAYLOAD, req)
        return reply(200, b'{"ok": true}')

    server = serve(route)
    out = snippet(certs.good.ca_der, f"""
import json
c = Client({server.url!r}, CAS)
result(get(c, "/v1/update?board=x"))
result(download(c, "/payload", {len(PAYLOAD)}, window=16384))
body = json.dumps({{"state": "STAGED", "detail": "x" * 300}}).encode()
r = drive(c.request("POST", "/v1/report", {{"Content-Type": "application/json"}}, body))
c.expect(r, 200)
result(drive(c.read_all(1024)).decode())
""")
    assert out[1:] == [["ok", DIGEST], '{"ok": true}']
    assert server.handshakes == 1
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/v1/update?board=x"), ("GET", "/payload"), ("POST", "/v1/report")]
    assert server.requests[1].headers["range"] == "bytes=0-"
    post = server.requests[2]
    assert post.body.endswith(b'"}') and len(post.body) > 300
    assert post.recvs == 1  # head and body in one write, one TLS record


def test_a_drop_costs_one_request_from_the_last_whole_block(certs: Certs, serve) -> None:
    def route(req: Request) -> Reply:
        return ranged(PAYLOAD, req, keep=50_000 if len(server.requests) == 1 else None)

    server = serve(route)
    out = snippet(certs.good.ca_der, f"""
c = Client({server.url!r}, CAS)
result(download(c, "/payload", {len(PAYLOAD)}))
""")
    assert out == [["ok", DIGEST]]
    assert [r.headers["range"] for r in server.requests] == ["bytes=0-", "bytes=49152-"]
    assert server.handshakes == 2


def test_capped_ranges_and_servers_that_send_too_much(certs: Certs, serve) -> None:
    def route(req: Request) -> Reply:
        if req.path == "/capped":  # a server that answers at most 30000 bytes a request
            first = int(req.headers["range"][6:-1])
            last = min(first + 29_999, len(PAYLOAD) - 1)
            return reply(206, PAYLOAD[first:last + 1],
                         (("Content-Range", f"bytes {first}-{last}/{len(PAYLOAD)}"),))
        # Range ignored, no Content-Length, and more than the payload before the close
        return reply(200, PAYLOAD + b"junk" * 1000, close=True, length=False)

    server = serve(route)
    out = snippet(certs.good.ca_der, f"""
c = Client({server.url!r}, CAS)
result(download(c, "/capped", {len(PAYLOAD)}))
result(download(c, "/more", {len(PAYLOAD)}))
c.expect(drive(c.request("GET", "/more")), 200)
result(drive(c.read_all(200000))[-4:].decode())
""")
    assert out == [["ok", DIGEST], ["ok", DIGEST], "junk"]
    capped = [r.headers["range"] for r in server.requests if r.path == "/capped"]
    assert capped == ["bytes=0-", "bytes=30000-", "bytes=60000-", "bytes=90000-"]
    assert server.handshakes == 2  # a connection left inside a body is never reused


def test_refused_connections_leave_no_socket_open(certs: Certs) -> None:
    with HandshakeFault("stall") as gone:
        port = gone.port
    out = snippet(certs.good.ca_der, f"""
import gc, os
gc.disable()  # a socket left to the garbage collector stays open
before = len(os.listdir("/proc/self/fd"))
for _ in range(20):
    last = outcome(get, Client(None, CAS, 1), "https://127.0.0.1:{port}/")
result(last[:2])
result(len(os.listdir("/proc/self/fd")) - before)
""")
    assert out == [["TransportError", True], 0]
