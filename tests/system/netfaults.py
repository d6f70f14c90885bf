"""Network trouble on loopback: a TCP proxy that cuts connections, and a
static HTTPS server that ignores Range (as some CDNs and proxies do)."""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import threading
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
