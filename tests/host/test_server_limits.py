"""mpota serve under a slow-client flood: idle and trickling connections are closed
after the idle timeout, and a real client is answered meanwhile (loopback only)."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpota_host.errors import ServerError
from mpota_host.server import ServerHandle, add_device, start_server
from mpota_host.server.app import Limits

IDLE = 2.0  # the test's idle timeout (the default is 30 s)
BOUND = 20.0  # every bounded wait below gives up after this long


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    (tmp_path / "releases").mkdir()
    handle = start_server(tmp_path / "releases", tmp_path / "data",
                          limits=Limits(idle_timeout=IDLE, max_connections=request.param))
    try:
        yield handle
    finally:
        handle.stop()


def _context(handle: ServerHandle) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(handle.ca_pem))


def _tls(handle: ServerHandle) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", handle.port), timeout=BOUND)
    return _context(handle).wrap_socket(raw, server_hostname="localhost")


def _closed(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (EOF or reset); never blocks."""
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return not sock.recv(4096)
        if not select.select([sock], [], [], 0)[0]:
            return False
        return not sock.recv(4096)
    except (ssl.SSLError, OSError):
        return True


def _real_request(handle: ServerHandle, token: str) -> int:
    conn = http.client.HTTPSConnection("localhost", handle.port, context=_context(handle),
                                       timeout=BOUND)
    try:
        conn.request("GET", "/v1/update?board=esp32-generic-4mb&version_code=1",
                     headers={"X-Device-Id": "dev-1", "Authorization": f"Bearer {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("server", [100], indirect=True)
def test_a_slow_client_flood_neither_starves_nor_outlives_the_idle_timeout(
        server: ServerHandle, tmp_path: Path) -> None:
    token = add_device(tmp_path / "data", "dev-1")
    flood: list[socket.socket] = []
    trickling: list[socket.socket] = []
    try:
        for _ in range(60):  # TCP only: never start the TLS handshake
            flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=BOUND))
        for i in range(140):  # past the handshake (over the cap of 100), then idle or trickling
            try:
                sock = _tls(server)
            except (ssl.SSLError, OSError):
                continue  # the server may close it at once: it is over the cap
            flood.append(sock)
            if i % 2:
                trickling.append(sock)
        assert len(flood) > 160
        # a real client is answered while the flood holds its connections
        assert _real_request(server, token) == 200
        deadline = time.monotonic() + BOUND
        open_ = list(flood)
        while open_ and time.monotonic() < deadline:
            for sock in trickling:  # one byte of a request head at a time
                if sock in open_:
                    with contextlib.suppress(ssl.SSLError, OSError):  # closed meanwhile
                        sock.send(b"G")
            time.sleep(0.2)
            open_ = [s for s in open_ if not _closed(s)]
        assert open_ == [], f"{len(open_)} of {len(flood)} connections still open"
        assert _real_request(server, token) == 200
    finally:
        for sock in flood:
            sock.close()


@pytest.mark.parametrize("server", [2], indirect=True)
def test_at_the_cap_with_every_connection_busy_a_new_one_is_closed(
        server: ServerHandle, tmp_path: Path) -> None:
    token = add_device(tmp_path / "data", "dev-1")
    busy = []
    try:
        for _ in range(2):  # each sends a report head and then withholds its body
            sock = _tls(server)
            sock.sendall(b"POST /v1/report HTTP/1.1\r\nHost: localhost\r\nX-Device-Id: dev-1\r\n"
                         b"Authorization: Bearer " + token.encode() + b"\r\n"
                         b"Content-Length: 100\r\n\r\n{")
            busy.append(sock)
        time.sleep(0.3)  # let the server start handling both
        extra = _tls(server)
        try:
            extra.settimeout(BOUND)
            assert extra.recv(4096) == b""
        except (ssl.SSLError, OSError):
            pass  # closed: as good as EOF
        finally:
            extra.close()
        # a withheld body ends in 408 after the idle timeout, not in a held connection
        busy[0].settimeout(BOUND)
        answer = busy[0].recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        for sock in busy:
            sock.close()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ServerError, match="limits must be positive"):
        Limits(idle_timeout=0)
    with pytest.raises(ServerError, match="limits must be positive"):
        Limits(max_connections=0)


def test_the_limits_are_options_of_mpota_serve() -> None:
    from click.testing import CliRunner

    from mpota_host.cli import cli

    out = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    assert "--idle-timeout" in out and "--max-connections" in out
    assert "default: 30.0" in out and "default: 256" in out
