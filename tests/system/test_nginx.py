"""Interop with a web server nobody here wrote: the real agent on a simulated board
updates from a release directory served by nginx (the Debian package) over TLS,
through the configurations users and CDNs really have.

Every update must end with the image byte for byte in ota_1, the board booted
from it and confirmed (otadata VALID, agent CONFIRMED).
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet import Fleet
from helpers import BOARD_4MB
from mpota_host import devtls
from mpota_host.firmware import write_image
from mpota_host.sim.harness import BootRecord, SimBoard
from netfaults import FaultProxy
from nginx import Nginx

# every test here runs with the blocking agent and with the asyncio one
pytestmark = pytest.mark.usefixtures("driver")

SLOT1 = 0x190000  # ota_1 of boards/esp32-generic-4mb
SIZE = 192 * 1024  # three 64 KiB windows: small, and still more than one request
WIFI = {"wifi": {"ssid": "sim", "key": "sim-key"}}
# several payload requests per update, so connection limits and drops bite
DOWNLOAD = {"download": {"window": 32768, "backoff_ms": 10, "backoff_max_ms": 100, "stall_s": 5}}
LONG = "x" * 2048

# one server block per behaviour; all serve the fleet's release directory
SITES = {
    "plain": "",
    "no-range": "max_ranges 0;",
    "gzip": ("gzip on; gzip_types *; gzip_min_length 1; gzip_proxied any; "
             "gzip_http_version 1.0; gzip_vary on;"),
    "moved-301": "return 301 https://127.0.0.1:<port:plain>$request_uri;",
    "moved-302": "return 302 https://127.0.0.1:<port:plain>$request_uri;",
    # a redirect built from the Host header, as many sites write it
    "host-redirect": "location /old/ { rewrite ^/old/(.*)$ https://$http_host/$1 redirect; }",
    "keepalive-2": "keepalive_requests 2; keepalive_timeout 1s;",
    "keepalive-off": "keepalive_timeout 0;",
    # idle connections closed after 1 ms: while the device verifies the
    # manifest's signature or writes a window to flash, nginx closes the
    # connection the client means to reuse
    "keepalive-idle": "keepalive_timeout 1ms;",
    "long-header": (f'add_header X-Padding "{LONG}" always; '
                    f'add_header Content-Security-Policy "default-src \'self\'; {LONG}" always;'),
}

_ids = itertools.count(1)


@pytest.fixture
def nginx(fleet: Fleet, tmp_path: Path) -> Iterator[Nginx]:
    """nginx serving the fleet's releases with the fleet's TLS certificate (from
    the test CA the devices pin), one port per site of SITES."""
    tls = fleet.root / "server-data" / "tls"
    with Nginx(tmp_path / "nginx", fleet.releases, tls / "server.pem", tls / "server.key",
               SITES) as server:
        yield server


def release(fleet: Fleet, name: str = "rel") -> bytes:
    """Publish v2.0.0 (SIZE bytes) as the release directory ``name``; its image."""
    fleet.publish("2.0.0", 2, size=SIZE, name=name)
    return (fleet.root / f"fw-2.0.0-healthy-{SIZE}.bin").read_bytes()


def url_main(url: str) -> str:
    """main.py of the application: probation, then (once) an update from ``url``."""
    return ("import mpota, os\n"
            "mpota.probation()\n"
            "if 'updated.flag' not in os.listdir():\n"
            "    open('updated.flag', 'w').close()\n"
            f"    print('RESULT', mpota.update({url!r}))\n")


def device(fleet: Fleet, url: str, server: bool = False,
           config: dict[str, Any] | None = None, ca_pem: bytes | None = None) -> SimBoard:
    """A board with v1.0.0 whose application updates from the release at ``url``.

    By default it is configured with release URLs only (no mpota server,
    device_id or token); with ``server`` it also has the fleet's mpota server.
    It pins the fleet's CA (DER), or the CAs of ``ca_pem`` (a PEM bundle)."""
    cfg = WIFI | DOWNLOAD | (config or {})
    if server:
        assert ca_pem is None
        return fleet.device(config=cfg, main_py=url_main(url))
    image = fleet.root / f"fw-1.0.0-healthy-{64 * 1024}.bin"
    if not image.exists():
        write_image(image, "1.0.0", "healthy", 64 * 1024)
    board = SimBoard.create(BOARD_4MB, image, fleet.root / f"urlonly{next(_ids)}.flash")
    ca_file, ca = ("ca.pem", ca_pem) if ca_pem else ("ca.der", fleet.server.ca_der.read_bytes())
    full: dict[str, Any] = {
        "ca": ca_file,
        "board": "esp32-generic-4mb",
        "version": "1.0.0",
        "version_code": 1,
        "trusted_keys": ["signing.pub.pem"],
        "watchdog_ms": 5000,
    } | cfg
    files = {ca_file: ca,
             "signing.pub.pem": fleet.pair.public.read_bytes()}
    board.install_agent(full, files, main_py=url_main(url))
    return board


def story(records: list[BootRecord]) -> list[tuple[str | None, str | None, str]]:
    return [(r.slot, r.version, r.kind) for r in records]


def agent_state(board: SimBoard) -> dict[str, Any]:
    path = board.fs / "mpota_state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def slot1(board: SimBoard, size: int) -> bytes:
    with board.flash.open("rb") as f:
        f.seek(SLOT1)
        return f.read(size)


def assert_updated(board: SimBoard, records: list[BootRecord], image: bytes) -> None:
    """The board runs v2 from ota_1, confirmed, and ota_1 holds exactly the image."""
    out = "\n".join(r.output for r in records)
    assert story(records) == [("ota_0", "1.0.0", "reset"), ("ota_1", "2.0.0", "repl")], out
    assert slot1(board, len(image)) == image, "ota_1 differs from the published image"
    status = board.status()
    assert status["boot_slot"] == "ota_1", status
    assert [e["state"] for e in status["otadata"]] == ["VALID", "VALID"], status["otadata"]
    state = agent_state(board)
    assert state.get("last_result", {}).get("state") == "CONFIRMED", (state, out)
    assert state["state"] == "IDLE", state


def update(fleet: Fleet, nginx: Nginx, site: str, path: str = "/rel/",
           **kw: Any) -> tuple[SimBoard, list[BootRecord], bytes]:
    image = release(fleet)
    board = device(fleet, nginx.url(site, path), **kw)
    return board, board.boot(max_boots=3), image


def payload_requests(nginx: Nginx, site: str) -> list[dict[str, Any]]:
    return [r for r in nginx.requests(site) if r["uri"].endswith("/payload")]


# the cases


@pytest.mark.parametrize("server", [False, True], ids=["release-urls-only", "with-mpota-server"])
def test_range_requests(fleet: Fleet, nginx: Nginx, server: bool) -> None:
    board, records, image = update(fleet, nginx, "plain", server=server)
    assert_updated(board, records, image)
    payload = payload_requests(nginx, "plain")
    assert all(r["status"] == "206" for r in payload), payload
    # the download is one request from byte 0 to the end (probation's reachability
    # check, a 1-byte Range, comes later)
    download = [r for r in payload if r["range"] != "bytes=0-0"]
    assert [r["range"] for r in download] == ["bytes=0-"], payload
    # the Host header names the port (RFC 9110 7.2: it is not 443)
    assert {r["host"] for r in nginx.requests("plain")} == {f"127.0.0.1:{nginx.ports['plain']}"}


def test_server_ignoring_range(fleet: Fleet, nginx: Nginx) -> None:
    board, records, image = update(fleet, nginx, "no-range")
    assert_updated(board, records, image)
    payload = payload_requests(nginx, "no-range")
    assert payload and all(r["status"] == "200" for r in payload), payload


def test_gzip_enabled_for_every_type(fleet: Fleet, nginx: Nginx) -> None:
    board, records, image = update(fleet, nginx, "gzip")
    assert_updated(board, records, image)
    rows = nginx.requests("gzip")
    # the client asks for the bytes as they are, and nginx sends them so
    assert {r["accept_encoding"] for r in rows} == {"identity"}, rows
    assert {r["content_encoding"] for r in rows} == {""}, rows


def test_content_encoding_sent_anyway_is_refused(fleet: Fleet, nginx: Nginx,
                                                 tmp_path: Path) -> None:
    """A server that compresses whatever the client asks (gzip_static always, as
    some CDNs do): the agent refuses the payload clearly, writes nothing bootable
    and ends FAILED."""
    image = release(fleet)
    served = tmp_path / "gz"
    shutil.copytree(fleet.releases / "rel", served / "rel")
    (served / "rel" / "payload.gz").write_bytes(gzip.compress((served / "rel" / "payload")
                                                              .read_bytes()))
    tls = fleet.root / "server-data" / "tls"
    sites = {"static-gz": f"location / {{ root {served}; gzip_static always; }}"}
    with Nginx(tmp_path / "nginx-gz", served, tls / "server.pem", tls / "server.key",
               sites) as gz:
        board = device(fleet, gz.url("static-gz", "/rel/"))
        records = board.boot(max_boots=2)
        assert any(r["content_encoding"] == "gzip" for r in gz.requests()), gz.requests()
    out = records[0].output
    assert story(records) == [("ota_0", "1.0.0", "repl")], out
    assert "Content-Encoding" in out and "gzip" in out, out
    status = board.status()
    assert status["boot_slot"] == "ota_0"
    assert [e["state"] for e in status["otadata"]] == ["VALID", "UNDEFINED"]
    assert slot1(board, len(image)) != image
    state = agent_state(board)
    assert state.get("last_result", {}).get("state") == "FAILED", state
    assert "Content-Encoding" in state["last_result"].get("reason", ""), state


@pytest.mark.parametrize("site", ["moved-301", "moved-302"])
def test_redirect_to_another_origin(fleet: Fleet, nginx: Nginx, site: str) -> None:
    board, records, image = update(fleet, nginx, site)
    assert_updated(board, records, image)
    # the payload is asked of the first origin once, then of the redirect's
    # target in one request (probation's reachability check, a 1-byte Range,
    # comes later and is not part of the download)
    asked = [r for r in payload_requests(nginx, site) if r["range"] != "bytes=0-0"]
    assert len(asked) == 1, nginx.requests(site)
    download = [r for r in payload_requests(nginx, "plain") if r["range"] != "bytes=0-0"]
    assert [r["range"] for r in download] == ["bytes=0-"], download


def test_redirect_to_a_cdn_that_chains_to_another_ca(fleet: Fleet, tmp_path: Path) -> None:
    """The release host and the CDN it redirects to have certificates from
    different CAs; the device pins both (a PEM bundle)."""
    image = release(fleet)
    tls = fleet.root / "server-data" / "tls"
    cdn = devtls.create(tmp_path / "cdn-tls", ca_name="CDN test CA")
    sites = {"origin": "return 302 https://127.0.0.1:<port:cdn>$request_uri;", "cdn": ""}
    with Nginx(tmp_path / "nginx-cdn", fleet.releases, tls / "server.pem", tls / "server.key",
               sites, certs={"cdn": (cdn.cert, cdn.key)}) as server:
        bundle = (tls / "ca.pem").read_bytes() + cdn.ca_pem.read_bytes()
        board = device(fleet, server.url("origin", "/rel/"), ca_pem=bundle)
        records = board.boot(max_boots=3)
        assert payload_requests(server, "cdn"), server.requests()
    assert_updated(board, records, image)


def test_redirect_built_from_the_host_header(fleet: Fleet, nginx: Nginx) -> None:
    board, records, image = update(fleet, nginx, "host-redirect", path="/old/rel/")
    assert_updated(board, records, image)
    assert payload_requests(nginx, "host-redirect")


@pytest.mark.parametrize(("site", "limit"), [("keepalive-2", 2), ("keepalive-off", 1),
                                             ("keepalive-idle", None)])
def test_keep_alive_limits(fleet: Fleet, nginx: Nginx, site: str, limit: int | None) -> None:
    board, records, image = update(fleet, nginx, site)
    assert_updated(board, records, image)
    rows = nginx.requests(site)
    if limit is not None:  # nginx did close connections after that many requests
        assert max(int(r["nth"]) for r in rows) <= limit, rows


def test_very_long_response_header(fleet: Fleet, nginx: Nginx) -> None:
    board, records, image = update(fleet, nginx, "long-header")
    assert_updated(board, records, image)


def test_drops_through_a_proxy(fleet: Fleet, nginx: Nginx) -> None:
    image = release(fleet)
    rng = random.Random(9)
    cuts: list[int | None] = [rng.randrange(12_000, 60_000) for _ in range(6)]
    with FaultProxy(nginx.ports["plain"], cuts) as proxy:
        board = device(fleet, f"https://127.0.0.1:{proxy.port}/rel/")
        records = board.boot(max_boots=3)
        assert proxy.cut_count >= 4, (proxy.cut_count, records[0].output)
    assert_updated(board, records, image)
    assert "retrying at byte" in records[0].output, records[0].output
