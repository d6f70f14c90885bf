"""``mpota serve``, ``mpota device ...`` and ``mpota reports``: thin wrappers over the library."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import click

from .. import devtls
from ..errors import UsageError, printable
from . import store
from .app import Limits, start_server

_DATA_HELP = "Server data directory: database, URL secret, dev TLS."
_data_option = click.option(
    "--data", type=click.Path(file_okay=False, path_type=Path), default=Path("mpota-data"),
    show_default=True, help=_DATA_HELP)


@click.command("serve")
@click.option("--releases", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Directory of release directories (each id/ from 'mpota "
              "release --out'); new ones are picked up without a restart.")
@_data_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8443, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--dev", is_flag=True,
              help="Use a development CA and certificate for localhost (created in DATA/tls).")
@click.option("--san", "sans", multiple=True, metavar="ADDRESS|NAME",
              help="With --dev: an IP address or host name the certificate must also cover, "
              "e.g. this machine's LAN address (repeatable).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TLS certificate chain (PEM).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The certificate's private key (PEM, unencrypted).")
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Verify every release with this public key; never offer one that fails.")
@click.option("--url-ttl", type=click.IntRange(1), default=3600, show_default=True,
              help="Seconds a signed payload URL stays valid.")
@click.option("--poll-after", type=click.IntRange(1), default=3600, show_default=True,
              help="Seconds devices are told to wait before asking again.")
@click.option("--idle-timeout", type=click.FloatRange(0.1), default=Limits.idle_timeout,
              show_default=True,
              help="Seconds a client may take for its TLS handshake, for each request's headers "
              "(from connecting or from the previous response) and for a request body; idle "
              "and trickling connections are closed after it.")
@click.option("--max-connections", type=click.IntRange(1), default=Limits.max_connections,
              show_default=True,
              help="Connections held at once; at the limit a new one closes the oldest idle "
              "connection (or is refused when none is idle).")
@click.option("-v", "--verbose", is_flag=True, help="Log every offer and report.")
def serve_cmd(releases: Path, data: Path, host: str, port: int, dev: bool,
              sans: tuple[str, ...], cert: Path | None,
              key: Path | None, pubkey: Path | None, url_ttl: int, poll_after: int,
              idle_timeout: float, max_connections: int, verbose: bool) -> None:
    """Serve signed releases to devices over HTTPS until Ctrl-C."""
    if dev and (cert or key):
        raise UsageError("--dev and --cert/--key exclude each other: give --dev for the local "
                         "development CA, or --cert FILE --key FILE for your own certificate")
    if bool(cert) != bool(key):
        raise UsageError(f"--cert and --key go together: give both (got only "
                         f"{'--cert' if cert else '--key'}), or --dev instead")
    if not dev and not (cert and key):
        raise UsageError("mpota serve speaks TLS only: give --dev (a development CA for "
                         "localhost, created in DATA/tls) or --cert FILE --key FILE")
    if sans and not dev:
        raise UsageError("--san goes with --dev (the development certificate); a certificate "
                         "of your own (--cert) must already name the address devices use")
    tls = None
    if dev:
        tls, made = devtls.prepare(data / "tls", sans)
        if made:
            click.echo(f"mpota: {made}")
    handler = logging.StreamHandler()
    handler.setFormatter(_PrintableFormatter("mpota: %(message)s"))
    logging.basicConfig(handlers=[handler], level=logging.INFO if verbose else logging.WARNING)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    with start_server(releases, data, host, port, pubkey, cert, key, url_ttl, poll_after,
                      Limits(idle_timeout, max_connections)) as handle:
        click.echo(f"mpota: serving {len(handle.releases())} releases on "
                   f"https://{host}:{handle.port} (devices pin CA: {handle.ca_der})")
        if tls is not None:
            for line in devtls.serve_advice(host, handle.port, tls, sans):
                click.echo(f"mpota: {line}")
        previous = signal.signal(signal.SIGTERM, on_signal)
        try:
            stopping.wait()  # the server runs in its own thread; Ctrl-C or SIGTERM ends this
        except KeyboardInterrupt:
            stopping.set()
        finally:
            signal.signal(signal.SIGTERM, previous)
    click.echo("mpota: server stopped")


@click.group("device")
def device_group() -> None:
    """Register devices with the update server, list and remove them."""


@device_group.command("add")
@click.argument("device_id")
@_data_option
@click.option("--board", help="Offer this board's releases only, whatever the device reports.")
@click.option("--tag", "tags", multiple=True, help="A label for roll-out rules (repeatable).")
@click.option("--replace", is_flag=True,
              help="Re-register an existing id with a new token (the old one stops working).")
def device_add(device_id: str, data: Path, board: str | None, tags: tuple[str, ...],
               replace: bool) -> None:
    """Register DEVICE_ID and print its token once."""
    token = store.add_device(data, device_id, board, tags, replace)
    click.echo(f"device {device_id} registered in {data}"
               + (f" (board {board})" if board else "")
               + (f" tags: {', '.join(tags)}" if tags else ""))
    click.echo(f"token: {token}")
    click.echo("The token is not stored (only its SHA-256) and cannot be shown again: "
               "put it in the device's configuration now.")


@device_group.command("list")
@_data_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def device_list(data: Path, as_json: bool) -> None:
    """Registered devices: board, tags, last state and version, last seen."""
    devices = store.list_devices(data)
    if as_json:
        click.echo(json.dumps(devices, indent=2))
        return
    if not devices:
        click.echo(f"no devices registered in {data}; add one with 'mpota device add ID'")
        return
    click.echo(f"{'device':<20} {'board':<20} {'state':<14} {'version_code':>12}  "
               f"{'last seen':<20} tags")
    for d in devices:
        click.echo(f"{_text(d['id']):<20} {_text(d['board'] or d['reported_board']):<20} "
                   f"{_text(d['state']):<14} {_text(d['version_code']):>12}  "
                   f"{_text(d['last_seen']):<20} {_text(','.join(d['tags']))}")


@device_group.command("remove")
@click.argument("device_id")
@_data_option
def device_remove(device_id: str, data: Path) -> None:
    """Unregister DEVICE_ID: its token stops working at once (its reports are kept)."""
    store.remove_device(data, device_id)
    click.echo(f"device {device_id} removed from {data}")


@click.command("reports")
@_data_option
@click.option("--device", "device_id", help="Only this device's reports.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reports_cmd(data: Path, device_id: str | None, as_json: bool) -> None:
    """Every report devices sent, oldest first."""
    rows = store.reports(data, device_id)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no reports yet" + (f" from {printable(device_id)}" if device_id else ""))
        return
    click.echo(f"{'time':<20} {'device':<20} {'state':<14} {'version_code':>12}  detail")
    for r in rows:
        click.echo(f"{_text(r['time']):<20} {_text(r['device']):<20} {_text(r['state']):<14} "
                   f"{_text(r['version_code']):>12}  {_text(r['detail'], '')}")


def _text(value: object, missing: str = "-") -> str:
    # Every value here was sent by a device: control characters (ANSI escapes)
    # are shown escaped, never interpreted by the operator's terminal.
    return missing if value is None else printable(value)


class _PrintableFormatter(logging.Formatter):
    """Log lines carry device- and file-supplied text: escape it, one line per message
    (a traceback, the server's own text, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))
