"""nginx for the interop tests: a config written into the test's directory, the
real binary run as a child (``daemon off``, ``master_process off``: no user switch,
one process), listening on loopback ports, stopped by the test.

Each *site* is one ``server`` block on its own port with TLS; its directives may
name another site's port as ``<port:NAME>`` (for redirects to another origin).
Every request lands in a JSON access log that the tests read (``requests()``).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from services import require_service

_LOG_FORMAT = (
    "log_format mpota escape=json '{"
    '"site":"$server_port","connection":"$connection","nth":"$connection_requests",'
    '"method":"$request_method","uri":"$request_uri","status":"$status",'
    '"host":"$http_host","range":"$http_range","accept_encoding":"$http_accept_encoding",'
    '"content_encoding":"$sent_http_content_encoding","bytes":"$body_bytes_sent"'
    "}';"
)


_PORT = re.compile(r"<port:([\w-]+)>")


class NginxError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx serving ``root`` over TLS (``cert``/``key``, or a site's own from
    ``certs``) on one port per site."""

    def __init__(self, workdir: Path, root: Path, cert: Path, key: Path,
                 sites: dict[str, str], http: str = "",
                 certs: dict[str, tuple[Path, Path]] | None = None) -> None:
        self.binary = require_service("nginx")
        self.workdir = workdir
        self.root = root
        self.cert = cert
        self.key = key
        self.sites = sites
        self.http = http
        self.certs = certs or {}  # site -> (certificate, key) instead of cert/key
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def conf(self) -> Path:
        return self.workdir / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    def url(self, site: str, path: str = "/") -> str:
        return f"https://127.0.0.1:{self.ports[site]}{path}"

    def _config(self) -> str:
        def port(match: re.Match[str]) -> str:
            return str(self.ports[match.group(1)])

        servers = []
        for name, directives in self.sites.items():
            body = _PORT.sub(port, directives)
            cert, key = self.certs.get(name, (self.cert, self.key))
            servers.append(f"""
    server {{
        listen 127.0.0.1:{self.ports[name]} ssl;
        server_name {name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {self.root};
        {body}
    }}""")
        tmp = self.workdir
        return f"""# written by tests/system/nginx.py
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 64; }}
http {{
    {_LOG_FORMAT}
    access_log {self.access_log} mpota;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/json json; text/plain txt; }}
    default_type application/octet-stream;
    sendfile on;
    {self.http}
{"".join(servers)}
}}
"""

    def start(self) -> Nginx:
        for _attempt in range(3):  # a port picked free may be taken before nginx binds it
            self.ports = {name: _free_port() for name in self.sites}
            self.conf.write_text(self._config())
            test = subprocess.run([str(self.binary), "-t", "-q", "-p", str(self.workdir),
                                   "-e", str(self.error_log), "-c", str(self.conf)],
                                  capture_output=True, text=True, check=False)
            if test.returncode != 0:
                raise NginxError(f"nginx refused {self.conf}: {test.stderr.strip()}")
            with (self.workdir / "stderr.log").open("ab") as stderr:
                self.proc = subprocess.Popen(
                    [str(self.binary), "-p", str(self.workdir), "-e", str(self.error_log),
                     "-c", str(self.conf)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
            if self._wait_listening():
                return self
            self.stop()
            if "Address already in use" not in self.errors():
                break
        raise NginxError(f"nginx did not start: {self.errors()[-2000:]}")

    def _wait_listening(self, timeout: float = 10.0) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        pending = set(self.ports.values())
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            for port in list(pending):
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), timeout=1):
                    pending.discard(port)
            if pending:
                time.sleep(0.02)
        return not pending

    def errors(self) -> str:
        logs = (self.error_log, self.workdir / "stderr.log")
        return "".join(p.read_text(errors="replace") for p in logs if p.exists())

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def requests(self, site: str | None = None) -> list[dict[str, Any]]:
        """The access log: one dict per request, oldest first (of one site if given)."""
        if not self.access_log.exists():
            return []
        rows = [json.loads(line) for line in self.access_log.read_text().splitlines() if line]
        if site is not None:
            rows = [r for r in rows if r["site"] == str(self.ports[site])]
        return rows

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
