"""The HTTPS update server (API v1), and a runner that serves it from a background thread.

Routes (JSON everywhere except the payload; every error is ``{"error": "..."}``):

- ``GET /v1/update?board=&version_code=`` (device token): the release to
  install, if any, with its exact manifest and signature and a signed URL.
- ``GET``/``HEAD /v1/payload/<release>?device=&expires=&sig=`` (the signed URL
  is the credential): the payload, with single-range ``Range`` support.
- ``POST /v1/report`` (device token): what the device did; every report is kept.

Devices authenticate with ``X-Device-Id`` and ``Authorization: Bearer <token>``;
any failure is the same 401 ``{"error": "unauthorized"}``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import re
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import devtls, keys
from ..errors import MpotaError, ServerError, printable
from .catalog import Catalog, Policy, Release, UpdateQuery, newest_release
from .store import (
    BOARD_NAME,
    Device,
    Store,
    add_device,
    list_devices,
    remove_device,
    report_problems,
    reports,
)
from .urls import PayloadUrls, load_secret

__all__ = ["Limits", "ServerHandle", "UpdateService", "add_device", "list_devices",
           "remove_device", "reports", "start_server"]

log = logging.getLogger("mpota.server")

MAX_REPORT = 4096
MAX_VERSION_CODE = 0x7FFFFFFF
_VERSION_CODE = re.compile(r"[0-9]{1,10}")
_LOOPBACK = ("127.0.0.1", "localhost", "0.0.0.0", "::", "::1", "")
_START_TIMEOUT = 30.0
# Request heads: one line or header field, and the number of fields. Devices
# send a handful of short headers; browsers and proxies stay far below these.
MAX_LINE = 4096
MAX_FIELD = 4096
MAX_HEADERS = 32
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What one client may hold of the server, so slow or idle clients cannot starve it.

    Args:
        idle_timeout: Seconds a connection may go without a complete request:
            from its TCP accept to the end of the TLS handshake, from then (or
            from its previous response) to the end of the next request's
            headers, and to read a request body. Idle and trickling clients are
            closed after it.
        max_connections: Connections past the TLS handshake held at once; at
            the limit a new one closes the oldest connection that is waiting
            for a request, or is itself closed when all are busy.
    """

    idle_timeout: float = 30.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        if not self.idle_timeout > 0 or self.max_connections < 1:
            raise ServerError(f"limits must be positive: idle timeout {self.idle_timeout} s, "
                              f"max connections {self.max_connections}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _unauthorized() -> web.Response:
    # One answer for a missing header, an unknown device and a wrong token.
    return _error(401, "unauthorized", {"WWW-Authenticate": 'Bearer realm="mpota"'})


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def offer_body(chosen: Release, payload_url: str, poll_after: int) -> dict[str, Any]:
    """The ``/v1/update`` answer offering ``chosen``. Devices ignore keys they do not know."""
    return {
        "update": True,
        "release": chosen.id,
        "version": chosen.version,
        "version_code": chosen.version_code,
        "manifest": base64.b64encode(chosen.manifest).decode("ascii"),
        "signature": base64.b64encode(chosen.signature).decode("ascii"),
        "payload_url": payload_url,
        "payload_size": chosen.payload_size,
        "poll_after": poll_after,
    }


class _PayloadFile(web.FileResponse):
    """A FileResponse that always serves the payload itself.

    aiohttp would serve a ``payload.gz`` or ``payload.br`` lying beside it to a
    client that accepts that encoding; the bytes a device downloads must be
    the ones its manifest hashes, so the compressed lookup is switched off.
    """

    def _get_file_path_stat_encoding(
        self, accept_encoding: str
    ) -> tuple[Path | None, os.stat_result, str | None]:
        return super()._get_file_path_stat_encoding("")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return _error(e.status, f"{e.reason.lower()}: {request.method} {request.path}", allow)
    except MpotaError as e:
        log.error("%s %s failed: %s", request.method, request.path, e)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
    return _error(500, "internal server error (the server log says why)")


class UpdateService:
    """The v1 handlers over a catalog of releases, a device store and a URL signer.

    Args:
        catalog: The releases on offer.
        store: Registered devices and their reports.
        urls: Signs and checks payload URLs.
        poll_after: Seconds a device should wait before asking again.
        policy: Picks the release a device gets (default: the newest for its board).
    """

    def __init__(self, catalog: Catalog, store: Store, urls: PayloadUrls,
                 poll_after: int = 3600, policy: Policy = newest_release,
                 body_timeout: float = 30.0) -> None:
        self.catalog = catalog
        self.store = store
        self.urls = urls
        self.poll_after = poll_after
        self.policy = policy
        self.body_timeout = body_timeout

    def application(self) -> web.Application:
        app = web.Application(middlewares=[_json_errors], client_max_size=MAX_BODY)
        app.router.add_get("/v1/update", self.update)
        app.router.add_get("/v1/payload/{release}", self.payload)  # HEAD as well
        app.router.add_post("/v1/report", self.report)
        return app

    def _device(self, request: web.Request) -> Device | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = ""
        return self.store.authenticate(request.headers.get("X-Device-Id", ""), token.strip())

    async def update(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return _unauthorized()
        board = request.query.get("board", "")
        code = request.query.get("version_code", "")
        if not BOARD_NAME.fullmatch(board):
            return _error(400, f"query parameter board={_shown(board)} must be 1-32 characters "
                               "of A-Z a-z 0-9 _ . -")
        if not _VERSION_CODE.fullmatch(code) or int(code) > MAX_VERSION_CODE:
            return _error(400, f"query parameter version_code={_shown(code)} must be an integer "
                               f"0..{MAX_VERSION_CODE}")
        version_code = int(code)
        now = time.time()
        query = UpdateQuery(device, device.board or board, version_code,
                            dt.datetime.fromtimestamp(now, dt.timezone.utc))
        chosen = self.policy(self.catalog.releases(), query)
        # what the device runs and, with an offer, what it was offered: agents
        # send no report when a download starts, so the offer is the server's
        # record of an update in progress (one transaction either way)
        self.store.seen(device.id, board, version_code,
                        None if chosen is None else (chosen.id, chosen.version_code))
        if chosen is None:
            return web.json_response({"update": False, "poll_after": self.poll_after})
        log.info("device %s (%s, version_code %d): offered release %s (version_code %d)",
                 device.id, query.board, version_code, chosen.id, chosen.version_code)
        url = self.urls.make(chosen.id, device.id, now)
        return web.json_response(offer_body(chosen, url, self.poll_after))

    async def payload(self, request: web.Request) -> web.StreamResponse:
        release_id = request.match_info["release"]
        device_id = request.query.get("device")
        refusal = self.urls.refusal(release_id, device_id, request.query.get("expires"),
                                    request.query.get("sig"), time.time())
        if refusal is not None:
            return _error(403, refusal)
        assert device_id is not None  # refusal() checked it
        if self.store.device(device_id) is None:
            return _error(403, f"device {device_id} is not registered (any more)")
        # The id is only ever looked up among the loaded releases, never joined to a path.
        chosen = self.catalog.get(release_id)
        if chosen is None:
            return _error(404, f"no release {_shown(release_id)} on this server: "
                               "ask /v1/update again")
        return _PayloadFile(chosen.payload, headers={"Content-Type": "application/octet-stream"})

    async def report(self, request: web.Request) -> web.Response:
        device = self._device(request)
        if device is None:
            return _unauthorized()
        try:
            body = await asyncio.wait_for(_read_limited(request, MAX_REPORT), self.body_timeout)
        except asyncio.TimeoutError:
            return _error(408, f"report body not received within {self.body_timeout:g} s")
        if body is None:
            return _error(413, f"report body is larger than {MAX_REPORT} bytes: "
                               "shorten the detail")
        try:
            report = json.loads(body)
        except RecursionError:
            return _error(400, "report body is nested too deeply: send one flat JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            return _error(400, f"report body is not JSON: {e}")
        problems = report_problems(report)
        if problems:
            return _error(400, "; ".join(problems))
        self.store.record_report(device.id, report)
        log.info("device %s reports %s (%s)", device.id, printable(report["state"]),
                 printable(report.get("detail") or "no detail"))
        return web.json_response({"ok": True})


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is longer than ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


@dataclass
class ServerHandle:
    """A running server (see :func:`start_server`); a context manager that stops it.

    ``ca_der``/``ca_pem`` are the certificate devices pin: the dev CA. With
    your own certificate, ``ca_pem`` is the chain file given and ``ca_der``
    its last certificate (the CA when the file ends with it; a warning is
    logged when it does not).
    """

    url: str
    port: int
    ca_der: Path
    ca_pem: Path
    data: Path
    _catalog: Catalog | None = field(default=None, repr=False, compare=False)
    _thread: _ServerThread | None = field(default=None, repr=False, compare=False)

    def releases(self) -> list[Release]:
        """The releases the server offers now."""
        return self._catalog.releases() if self._catalog else []

    def stop(self) -> None:
        """Stop serving and wait for the server thread to end (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ServerThread(threading.Thread):
    """An aiohttp server on its own event loop in a daemon thread."""

    def __init__(self, app: web.Application, host: str, port: int,
                 context: ssl.SSLContext, limits: Limits) -> None:
        super().__init__(name=f"mpota-serve-{port}", daemon=True)
        self.app, self.host, self.port, self.context = app, host, port, context
        self.limits = limits
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: Exception | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except Exception as e:  # reported to start_server's caller by start()
            self.error = e
        finally:
            self.ready.set()
            self.loop.close()

    async def _serve(self) -> None:
        # aiohttp's keep-alive timer starts when a connection is made and again
        # after each response, and closes the connection if no complete request
        # head has arrived by then: it is the header-read and the idle timeout.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0,
                               keepalive_timeout=self.limits.idle_timeout,
                               max_line_size=MAX_LINE, max_field_size=MAX_FIELD,
                               max_headers=MAX_HEADERS)
        await runner.setup()
        server: asyncio.Server | None = None
        try:
            handlers = runner.server
            assert handlers is not None
            idle = self.limits.idle_timeout

            def admit() -> asyncio.BaseProtocol:
                return _admit(handlers, self.limits.max_connections)

            if sys.version_info >= (3, 11):  # also for a client that never answers our goodbye
                server = await self.loop.create_server(
                    admit, self.host, self.port, ssl=self.context, ssl_handshake_timeout=idle,
                    ssl_shutdown_timeout=idle)
            else:
                server = await self.loop.create_server(
                    admit, self.host, self.port, ssl=self.context, ssl_handshake_timeout=idle)
            self.port = server.sockets[0].getsockname()[1]
            self._stopping = asyncio.Event()
            self.ready.set()
            await self._stopping.wait()
        finally:
            if server is not None:
                server.close()
            await runner.cleanup()

    def start_and_wait(self) -> None:
        self.start()
        if not self.ready.wait(_START_TIMEOUT):
            raise ServerError(f"server on {self.host}:{self.port} did not start in "
                              f"{_START_TIMEOUT:.0f} s")
        if self.error is not None:
            reason = getattr(self.error, "strerror", None) or self.error
            raise ServerError(f"cannot serve on {self.host}:{self.port}: {reason}; "
                              "choose another --host or --port") from self.error

    def stop(self) -> None:
        stopping = self._stopping
        if stopping is not None and self.is_alive():
            try:
                self.loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                log.debug("server loop already closed")  # it stopped by itself meanwhile
        self.join(timeout=10)


class _Refused(asyncio.Protocol):
    """Closes a connection over the limit as soon as its handshake is done."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _waiting(handler: web.RequestHandler) -> bool:
    # aiohttp keeps no public flag for "waiting for the next request head";
    # its pending _waiter future is that state (aiohttp is pinned).
    waiter = getattr(handler, "_waiter", None)
    return waiter is not None and not waiter.done()


def _admit(handlers: web.Server, max_connections: int) -> asyncio.BaseProtocol:
    """The protocol for a new connection: aiohttp's, once there is room for it."""
    # A closed handler stays listed until its TLS shutdown ends: count the open ones.
    live = [h for h in handlers.connections if h.transport is not None]
    if len(live) >= max_connections:
        idle = next((h for h in live if _waiting(h)), None)  # oldest first
        if idle is None:
            log.warning("connection refused: all %d connections are busy (--max-connections)",
                        len(live))
            return _Refused()
        log.info("closing an idle connection to admit a new one (--max-connections %d)",
                 max_connections)
        transport = idle.transport
        idle.force_close()
        if transport is not None:
            transport.abort()  # no TLS goodbye for a client that sent nothing
    return handlers()


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ServerError(f"cannot load TLS certificate {cert} with key {key}: {e}; give a PEM "
                          "certificate chain and its unencrypted private key, or use --dev") from e
    return context


def _pinned_der(cert: Path, data: Path) -> Path:
    """DER of the last certificate in ``cert`` (the one nearest the root), for devices to pin."""
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
    except (OSError, ValueError) as e:
        raise ServerError(f"cannot read certificates from {cert}: {e}") from e
    last = chain[-1]
    try:
        is_ca = last.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        log.warning("%s holds no CA certificate (its last one is for %s): devices must pin "
                    "the CA that signed it, not %s", cert, last.subject.rfc4514_string(), cert)
    der = data / "pinned-cert.der"
    der.write_bytes(last.public_bytes(serialization.Encoding.DER))
    return der


def start_server(releases: Path, data: Path, host: str = "127.0.0.1", port: int = 0,
                 pubkey: Path | None = None, cert: Path | None = None, key: Path | None = None,
                 url_ttl: int = 3600, poll_after: int = 3600,
                 limits: Limits | None = None) -> ServerHandle:
    """Serve ``releases`` over HTTPS from a daemon thread and return once it accepts connections.

    Args:
        releases: Directory of release directories (rescanned when it changes).
        data: Data directory: ``mpota.db``, ``url-secret`` and ``tls/`` (created when missing).
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see ``ServerHandle.port``).
        pubkey: Verify every release with this public key and skip those that fail.
        cert: PEM certificate chain; without ``cert``/``key`` a development CA
            and certificate for localhost and 127.0.0.1 are created in ``data/tls``.
        key: The certificate's private key (PEM, unencrypted).
        url_ttl: Seconds a signed payload URL stays valid.
        poll_after: Seconds devices are told to wait before asking again.
        limits: Timeouts and the connection cap (default: :class:`Limits`).

    Returns:
        A handle with the URL, the real port and the CA devices pin; call
        ``stop()`` or use it as a context manager.

    Raises:
        ServerError: The releases directory, TLS material, data directory or
            address cannot be used.
        KeyFileError: ``pubkey`` cannot be loaded.
    """
    if (cert is None) != (key is None):
        raise ServerError("give both a certificate and its key (--cert FILE --key FILE), "
                          "or neither to use the development CA (--dev)")
    if not releases.is_dir():
        raise ServerError(f"releases directory {releases} does not exist: create it and write "
                          f"releases into it with 'mpota release ... --out {releases}/<id>'")
    public = keys.load_public(pubkey) if pubkey is not None else None
    store = Store(data)
    urls = PayloadUrls(load_secret(data), url_ttl)
    catalog = Catalog(releases, public)
    catalog.releases()  # load now: warnings about skipped releases appear at start-up
    if cert is None or key is None:
        tls = devtls.ensure(data / "tls")
        cert, key, ca_pem, ca_der = tls.cert, tls.key, tls.ca_pem, tls.ca_der
    else:
        ca_pem, ca_der = cert, _pinned_der(cert, data)
    limits = limits or Limits()
    service = UpdateService(catalog, store, urls, poll_after,
                            body_timeout=limits.idle_timeout)
    thread = _ServerThread(service.application(), host, port, _tls_context(cert, key), limits)
    thread.start_and_wait()
    url_host = "localhost" if host in _LOOPBACK else f"[{host}]" if ":" in host else host
    return ServerHandle(f"https://{url_host}:{thread.port}", thread.port, ca_der, ca_pem, data,
                        catalog, thread)

