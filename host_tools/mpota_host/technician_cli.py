"""``mpota status / provision / trigger / push --port PORT`` and ``mpota sim serial``:
thin wrappers over :mod:`mpota_host.technician`."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import technician
from .sim.harness import SimBoard
from .sim.serial import SerialBoard

_port = click.option("--port", "-p", required=True,
                     help="Serial port of the board: /dev/ttyUSB0, /dev/cu.usbserial-*, COM3.")
_baud = click.option("--baud", default=115200, show_default=True, help="Serial line rate.")


@click.command("status")
@_port
@_baud
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(port: str, baud: int, as_json: bool) -> None:
    """Running and next slot, otadata, versions, agent state, free heap."""
    with technician.connect(port, baud) as link:
        info = technician.board_status(link)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows: list[tuple[str, Any]] = [
        ("MicroPython", info["micropython"]),
        ("running slot", info["running"]),
        ("next slot", info["next"]),
        ("boots next", info["boot"]),
    ]
    for i, entry in enumerate(info["otadata"]):
        rows.append((f"otadata[{i}]", f"seq={entry['seq']} {entry['state']}"
                     + ("" if entry["crc_ok"] else " (bad crc)")))
    if info.get("agent"):
        firmware = f"{info.get('version')} (version_code {info.get('version_code')})"
        rows += [("agent", info["agent"]), ("firmware", firmware),
                 ("agent state", info.get("state")), ("last result", info.get("last_result"))]
        if info.get("agent_error"):
            rows.append(("agent error", info["agent_error"]))
    else:
        rows.append(("agent", "not installed: run 'mpota provision'"))
    rows.append(("free heap", f"{info['free_heap']} bytes"))
    for name, value in rows:
        click.echo(f"{name:<13} {value}")


@click.command("provision")
@_port
@_baud
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path), required=True,
              help="Provisioning config (JSON): server, device_id, token, board, ca, "
                   "trusted_keys, optional encryption_key, wifi, policy.")
@click.option("--hooks", is_flag=True, help="Also install boot.py/main.py that run the agent.")
def provision_cmd(port: str, baud: int, config_path: Path, hooks: bool) -> None:
    """Install the compiled agent, its config and keys; running it twice changes nothing."""
    config = technician.ProvisionConfig.load(config_path)
    technician.agent_files()  # no agent or no mpy-cross: refused before the port is opened
    with technician.connect(port, baud) as link:
        report = technician.provision_board(link, config, hooks, click.echo)
    click.echo(f"provisioned {config.device_id}: {len(report.written)} written, "
               f"{len(report.unchanged)} unchanged"
               + (f"; decryption key {report.key_id}" if report.key_id else ""))


@click.command("trigger")
@_port
@_baud
@click.option("--release-url", help="Update from this release directory URL instead of the "
                                    "server's offer.")
def trigger_cmd(port: str, baud: int, release_url: str | None) -> None:
    """Start an update on the board and stream its progress (Ctrl-C cancels cleanly)."""
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with technician.connect(port, baud) as link:
        result = technician.trigger_update(link, release_url, click.echo)
    click.echo(f"result: {result}")
    if result == "INTERRUPTED":
        sys.exit(130)


@click.command("push")
@_port
@_baud
@click.argument("reldir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-apply", is_flag=True, help="Stage only; apply later with mpota.apply().")
def push_cmd(port: str, baud: int, reldir: Path, no_apply: bool) -> None:
    """Offline update: stream a release over the serial REPL into the inactive slot."""
    shown = [-1]

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // total
        if tenth != shown[0]:
            shown[0] = tenth
            click.echo(f"  {done * 100 // total:3d}% {done}/{total} bytes")

    with technician.connect(port, baud) as link:
        report = technician.push_release(link, reldir, baud, progress, apply=not no_apply)
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
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            click.echo("stopped")
