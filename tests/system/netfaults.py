"""Network trouble on loopback: a TCP proxy that cuts connections, a static
HTTPS server that ignores Range (as some CDNs and proxies do), an HTTPS server
whose answers a test writes byte for byte (counting TLS handshakes), and a TCP
server that spoils the TLS handshake."""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


class FaultProxy:
    """Forward 127.0.0.1:port to upstream; cut the n-th connection after
    cuts[n] bytes from the server (None: never). Counts bytes both ways."""

    def __init__(self, upstream_port: int, cuts: list[int | None] | None = None,
                 stall_after: int | None = None) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.cuts = list(cuts or [])
        self.stall_after = stall_after  # stop forwarding (keep open) after this many bytes
        self.down_bytes = 0
        self.connections = 0
        self.cut_count = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
            cut = self.cuts[index] if index < len(self.cuts) else None
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: int | None) -> None:
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        done = threading.Event()

        def up() -> None:
            try:
                while not done.is_set() and (data := client.recv(65536)):
                    server.sendall(data)
            except OSError:
                pass  # the other direction closed the pair
            done.set()

        threading.Thread(target=up, daemon=True).start()
        sent = 0
        try:
            while not done.is_set():
                data = server.recv(65536)
                if not data:
                    break
                if cut is not None and sent + len(data) >= cut:
                    client.sendall(data[: cut - sent])
                    with self._lock:
                        self.down_bytes += cut - sent
                        self.cut_count += 1
                    break
                if self.stall_after is not None and self.down_bytes >= self.stall_after:
                    self._stop.wait(3600)  # hold the connection open, send nothing
                    break
                client.sendall(data)
                sent += len(data)
                with self._lock:
                    self.down_bytes += len(data)
        except OSError:
            pass  # client went away
        finally:
            done.set()
            for s in (client, server):
                with contextlib.suppress(OSError):  # already closed
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


class StaticHTTPS:
    """Serve a directory over HTTPS with Python's http.server: no Range support,
    every GET answers 200 with the whole file."""

    handler: type[http.server.SimpleHTTPRequestHandler] = _Quiet

    def __init__(self, root: Path, cert: Path, key: Path) -> None:
        kind = self.handler
        handler = lambda *a, **kw: kind(*a, directory=str(root), **kw)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> StaticHTTPS:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class _Hops(_Quiet):
    """GET /hop/N/path answers 302 to /hop/N-1/path, then serves /path."""

    def do_GET(self) -> None:
        parts = self.path.split("/", 3)
        if len(parts) == 4 and parts[1] == "hop" and parts[2].isdigit():
            hops = int(parts[2])
            if hops > 0:
                self.send_response(302)
                self.send_header("Location", f"/hop/{hops - 1}/{parts[3]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.path = "/" + parts[3]
        super().do_GET()


class RedirectingHTTPS(StaticHTTPS):
    """StaticHTTPS that also bounces /hop/N/... through N redirects."""

    handler = _Hops


@dataclass
class Request:
    """One request as the scripted server read it (header names lower-case);
    recvs: how many TLS reads its bytes took (1: it was sent in one write)."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    recvs: int = 1


Reply = tuple[bytes, bool]  # the raw response, and whether to close the connection after it


def reply(status: int, body: bytes = b"", headers: tuple[tuple[str, str], ...] = (),
          close: bool = False, length: bool = True, version: str = "HTTP/1.1") -> Reply:
    """A raw response: status line, headers, Content-Length unless length is False."""
    lines = [f"{version} {status} Whatever"] + [f"{k}: {v}" for k, v in headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    if close and version == "HTTP/1.1":
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, close


def ranged(payload: bytes, request: Request, keep: int | None = None) -> Reply:
    """payload answered as a static file server with Range support does; with
    keep, only the first keep bytes of the body are sent before the
    connection closes (a drop in the middle of the body)."""
    spec = request.headers.get("range", "")
    first, last = 0, len(payload) - 1
    headers: tuple[tuple[str, str], ...] = ()
    status = 200
    if spec.startswith("bytes="):
        first_text, _, last_text = spec[6:].partition("-")
        first = int(first_text)
        last = min(int(last_text) if last_text else last, last)
        status, headers = 206, (("Content-Range", f"bytes {first}-{last}/{len(payload)}"),)
    body = payload[first:last + 1]
    if keep is None:
        return reply(status, body, headers)
    raw, _ = reply(status, body, headers)
    return raw[:len(raw) - len(body) + keep], True


class _Reader:
    """Lines and bytes from a TLS socket, counting the reads (each returns
    at most one TLS record)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = b""
        self.recvs = 0

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.recvs += 1
        self.buf += data
        return bool(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf and self._more():
            pass
        end = self.buf.find(b"\n") + 1 or len(self.buf)
        line, self.buf = self.buf[:end], self.buf[end:]
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n and self._more():
            pass
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


class ScriptedHTTPS:
    """HTTPS on 127.0.0.1 with keep-alive, answering each request with
    route(request); counts completed TLS handshakes and records requests.
    Set refusing to close new connections at once (a server gone away)."""

    def __init__(self, cert: Path, key: Path, route: Callable[[Request], Reply]) -> None:
        self.route = route
        self.refusing = False
        self.handshakes = 0
        self.requests: list[Request] = []
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert, key)
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self.refusing:
                conn.close()
                continue
            with self._lock:
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with self._ctx.wrap_socket(conn, server_side=True) as tls:
                with self._lock:
                    self.handshakes += 1
                    self._open.append(tls)  # the wrapped socket now owns the connection
                reader = _Reader(tls)
                while (request := self._read(reader)) is not None:
                    with self._lock:
                        self.requests.append(request)
                    raw, close = self.route(request)
                    tls.sendall(raw)
                    if close:
                        tls.shutdown(socket.SHUT_RDWR)
                        return
        except (OSError, ValueError):
            return  # the client went away or the test closed the server

    @staticmethod
    def _read(reader: _Reader) -> Request | None:
        reader.recvs = 0
        first = reader.readline().decode()
        if not first.strip():
            return None
        method, path, _ = first.split(" ", 2)
        headers: dict[str, str] = {}
        while (line := reader.readline().decode()).strip():
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = reader.read(int(headers.get("content-length", "0")))
        return Request(method, path, headers, body, reader.recvs)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accepting thread (Linux)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=2)
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    def __enter__(self) -> ScriptedHTTPS:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class HandshakeFault:
    """A TCP server on 127.0.0.1 that spoils the TLS handshake: "close" reads
    the ClientHello and closes; "stall" accepts and never answers."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._open: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self.kind == "close":
                conn.settimeout(5)
                with contextlib.suppress(OSError):  # the client may already have gone
                    conn.recv(65536)
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            else:
                self._open.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accepting thread (Linux)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=2)
        for conn in self._open:
            conn.close()

    def __enter__(self) -> HandshakeFault:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
