"""The ``mpota`` command line: thin wrappers over the documented library functions.

Exactly one place, :func:`main`, turns an :class:`MpotaError` into a message on
stderr and an exit code.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from . import __version__, keys, prompts, release
from . import board as boards
from .appimage import ImageFacts, image_info
from .errors import (
    EXIT_INTERRUPTED,
    MpotaError,
    ReleaseError,
    SimulatorError,
    printable,
)
from .firmware import BEHAVIOURS, DEFAULT_SIZE, write_image
from .flashing import DEFAULT_BAUD, flash_firmware
from .server.commands import device_group, reports_cmd, serve_cmd
from .sim.harness import CAUSE_NAMES, BootRecord, SimBoard
from .technician_cli import (
    provision_cmd,
    push_cmd,
    sim_serial_cmd,
    status_cmd,
    trigger_cmd,
)


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = 1
    for suffix, factor in (("K", 1024), ("M", 1024 * 1024)):
        if text.endswith(suffix):
            text, scale = text[:-1], factor
    try:
        return int(float(text) * scale)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (examples: 65536, 256K, 1.5M)") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpota")
def cli() -> None:
    """mpota: secure over-the-air updates for MicroPython on ESP32."""


@cli.command("partition-table")
@click.argument("board_dir")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the binary table (flash it at 0x8000).")
def partition_table_cmd(board_dir: str, out: Path) -> None:
    """Write BOARD_DIR's partition table as the binary ESP-IDF table."""
    board = boards.load(board_dir)
    try:
        out.write_bytes(board.table_binary())
    except OSError as e:
        raise MpotaError(f"cannot write {out}: {e.strerror}; choose a writable --out") from e
    click.echo(f"{out}: {len(board.partitions)} partitions for {board.name}, flash at 0x8000")
    for p in board.partitions:
        click.echo(f"  {p.label:<10} {p.type_name:<5} {p.subtype_name:<9} "
                   f"0x{p.offset:06x} 0x{p.size:06x}")


@cli.command("keygen")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for KIND.pem (private, 0600) and KIND.pub.pem.")
@click.option("--kind", type=click.Choice(["signing", "encryption"]), default="signing",
              show_default=True, help="signing: releases; encryption: a fleet decryption key.")
@click.option("--passphrase", is_flag=True,
              help="Encrypt the private key (passphrase asked for, or $MPOTA_KEY_PASSPHRASE).")
def keygen_cmd(out: Path, kind: str, passphrase: bool) -> None:
    """Create a P-256 key pair (signing or encryption); never overwrites a key."""
    secret = prompts.new_passphrase().encode() if passphrase else None
    pair = keys.generate(out, secret, name=kind)
    click.echo(f"private key: {pair.private} (keep it secret, mode 0600)")
    click.echo(f"public key:  {pair.public} "
               f"({'install on devices' if kind == 'signing' else 'give to mpota release'})")
    click.echo(f"key id:      {pair.key_id}")


@cli.command("release")
@click.argument("firmware", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--version", "version", required=True, help="Version shown to people (e.g. 1.4.2).")
@click.option("--version-code", type=click.IntRange(0, 0x7FFFFFFF), required=True,
              help="Integer that must grow with every release; devices refuse lower ones.")
@click.option("--board", "board_name", required=True,
              help="Board name (see docs/boards.md; $MPOTA_BOARDS) or directory.")
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Private signing key (signing.pem).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Release directory to create.")
@click.option("--security-counter", type=click.IntRange(0, 0x7FFFFFFF), default=0,
              show_default=True, help="Anti-rollback floor devices raise after confirming.")
@click.option("--expires", help="Expiry: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, or 30d / 12h.")
@click.option("--min-version-code", type=click.IntRange(0, 0x7FFFFFFF),
              help="Devices must run at least this version_code first.")
@click.option("--notes", help="Release notes (short).")
@click.option("--encrypt-for", "encrypt_for", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Encrypt the image for this public key (encryption.pub.pem); repeatable.")
@click.option("--force", is_flag=True,
              help="Release despite a likely mistake (a --version the image's descriptor "
                   "disagrees with, an --expires already past, a key of the wrong kind).")
def release_cmd(firmware: Path, version: str, version_code: int, board_name: str,
                key_path: Path, out: Path, security_counter: int, expires: str | None,
                min_version_code: int | None, notes: str | None,
                encrypt_for: tuple[Path, ...], force: bool) -> None:
    """Check FIRMWARE with esptool and write a signed (optionally encrypted) release.

    Refuses likely mistakes unless --force: a --version that disagrees with the
    image's app descriptor, an --expires already past, the encryption key as the
    signing key (or the other way round). An encrypted key's passphrase is asked
    for in a terminal ($MPOTA_KEY_PASSPHRASE otherwise).
    """
    key = keys.load_private(key_path, ask=prompts.ask_passphrase)
    when = release.parse_when(expires) if expires else None
    recipients = [(p, keys.load_public(p)) for p in encrypt_for]

    def review(image: ImageFacts) -> None:
        mistakes = release.likely_mistakes(image, version, when, (key_path, key), recipients)
        if mistakes and not force:
            raise ReleaseError("; ".join(mistakes) + " (or --force if this is intended)")
        for mistake in mistakes:
            click.echo(printable(f"mpota: warning: {mistake} (released anyway: --force)"),
                       err=True)

    fields = release.make_release(firmware, out, board_name, version, version_code, key,
                                  security_counter, when, min_version_code, notes,
                                  [public for _, public in recipients] or None, review=review)
    click.echo(printable(f"{out}: release {fields['version']} (version_code "
                         f"{fields['version_code']}) for {fields['board']}, {fields['size']} "
                         f"bytes, signed by key {fields['key_id']}"))
    if fields.get("encryption"):
        ids = ", ".join(r["key_id"] for r in fields["encryption"]["recipients"])
        click.echo(f"  encrypted (AES-256-CBC) for {ids}")


@cli.command("verify")
@click.argument("reldir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="The public key devices trust (signing.pub.pem).")
@click.option("--board", "board_name", help="Check against this board instead of the manifest's.")
@click.option("--decrypt-with", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A recipient's private key (encryption.pem): check it decrypts the image.")
def verify_cmd(reldir: Path, pubkey: Path, board_name: str | None,
               decrypt_with: Path | None) -> None:
    """Check a release as a device would; exit 0 only when every check holds."""
    private = keys.load_private(decrypt_with, ask=prompts.ask_passphrase) if decrypt_with \
        else None
    report = release.verify_release(reldir, keys.load_public(pubkey), board_name=board_name,
                                    decrypt_with=private)
    for check in report.checks:
        # messages quote the manifest: its text is shown escaped, never interpreted
        click.echo(f"  {'ok  ' if check.ok else 'FAIL'} {check.name:<16} "
                   f"{printable(check.message)}")
    if not report.ok:
        failed = ", ".join(c.name for c in report.checks if not c.ok)
        raise ReleaseError(f"{reldir} failed verification: {failed}")
    click.echo(f"{reldir}: valid release")


@cli.command("inspect")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(target: Path, as_json: bool) -> None:
    """Show a release directory or a firmware image."""
    info = _inspect_release(target) if target.is_dir() else image_info(target)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        items = value if isinstance(value, list) and value else [value]
        click.echo(f"{key:<18} {printable(items[0])}")
        for item in items[1:]:
            click.echo(f"{'':<18} {printable(item)}")


def _inspect_release(reldir: Path) -> dict[str, object]:
    raw, sig, payload = release.read_release(reldir)
    try:
        fields = release.load_manifest(raw)
    except ReleaseError as e:
        raise ReleaseError(f"{reldir / release.MANIFEST}: {e}") from None
    size, digest = release.sha256_file(payload)
    info: dict[str, object] = {"release": str(reldir)}
    for name in ("version", "version_code", "board", "chip_id", "security_counter", "size",
                 "sha256", "payload_size", "key_id", "created", "expires", "min_version_code",
                 "notes"):
        if fields.get(name) is not None:
            info[name] = fields[name]
    enc = fields.get("encryption")
    info["encrypted"] = enc is not None
    if isinstance(enc, dict):
        info["encryption"] = f"{enc.get('alg')} / {enc.get('kdf')}"
        info["recipients"] = [r.get("key_id") for r in enc.get("recipients", [])]
    info["signature_bytes"] = len(sig)
    info["payload_matches"] = size == fields.get("payload_size") and digest == fields.get(
        "payload_sha256")
    return info


@cli.command("flash")
@click.argument("firmware", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--port", required=True,
              help="The board's serial port (/dev/ttyUSB0, COM3) or a pyserial URL.")
@click.option("--board", "board_name", required=True,
              help="Board name (see docs/boards.md; $MPOTA_BOARDS) or directory.")
@click.option("--baud", type=click.IntRange(9600, 4_000_000), default=DEFAULT_BAUD,
              show_default=True, help="Baud rate for writing (first contact is at 115200).")
def flash_cmd(firmware: Path, port: str, board_name: str, baud: int) -> None:
    """Flash FIRMWARE over USB: a full image (.bin) at the chip's bootloader offset, or an
    app-only image (.app-bin) into ota_0.

    Checks the image against the board before touching the port, always erases
    otadata (the board boots ota_0), and ends with what was written where.
    """
    report = flash_firmware(port, board_name, firmware, baud)
    click.echo()
    for line in report.summary():
        click.echo(line)


@cli.group()
def sim() -> None:
    """The simulated ESP32 board (MicroPython unix port + flash file).

    Booting a board needs the unix-port MicroPython: pip install 'mpota[sim]'.
    """


@sim.command("firmware")
@click.option("--version", "version", required=True, help="Version string in the app descriptor.")
@click.option("--behaviour", type=click.Choice(BEHAVIOURS), default="healthy", show_default=True,
              help="How the firmware behaves after boot.")
@click.option("--size", default=str(DEFAULT_SIZE), show_default=True,
              help="Image size in bytes (K/M suffixes allowed; ~1.5M is realistic).")
@click.option("--board", "board_name", default="esp32-generic-4mb", show_default=True,
              help="Board the image is for (its chip id and flash size).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def sim_firmware(version: str, behaviour: str, size: str, board_name: str, out: Path) -> None:
    """Write a simulated MicroPython firmware: a valid app image for the board's chip."""
    layout = boards.load(board_name)
    fw = write_image(out, version, behaviour, _size(size), chip_id=layout.chip_id,
                     flash_mb=layout.flash_size >> 20)
    click.echo(f"{out}: firmware v{fw.version} ({fw.behaviour}), {fw.size} bytes")


@sim.command("new")
@click.option("--board", "board_dir", required=True,
              help="Board name (see docs/boards.md; $MPOTA_BOARDS) or directory.")
@click.option("--firmware", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="App image written into ota_0.")
@click.option("--flash", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The new flash file (FLASH.sim/ is created beside it).")
def sim_new(board_dir: str, firmware: Path, flash: Path) -> None:
    """Create a board: erased flash, partition table, FIRMWARE in ota_0."""
    board = SimBoard.create(board_dir, firmware, flash)
    ident = board.identity
    click.echo(printable(f"{flash}: new {ident['board']} ({ident['flash_size'] // 1024 // 1024} "
                         f"MiB, MAC {ident['mac']}), ota_0 = {firmware.name}"))


@sim.command("stage")
@click.option("--flash", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True)
@click.option("--firmware", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True)
def sim_stage(flash: Path, firmware: Path) -> None:
    """Write FIRMWARE into the next slot and set boot, exactly as an update would."""
    result = SimBoard(flash).stage(firmware)
    for line in result.output.strip().splitlines():
        click.echo(printable(line))


def _echo_device(line: str) -> None:
    click.echo(f"  | {printable(line)}")


@sim.command("boot")
@click.option("--flash", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True)
@click.option("--max-boots", default=10, show_default=True, help="Stop after this many boots.")
@click.option("--cut-power-at", "cut_at", type=int, default=None,
              help="Lose power during the N-th flash erase or write from now.")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds a boot may run before the harness stops watching.")
@click.option("--heapsize", default="2M", show_default=True, help="MicroPython heap (e.g. 64K).")
@click.option("-v", "--verbose", is_flag=True, help="Show the board's console output.")
def sim_boot(flash: Path, max_boots: int, cut_at: int | None, timeout: float, heapsize: str,
             verbose: bool) -> None:
    """Power the board on and follow its resets until it settles (one line per boot)."""

    def line(record: BootRecord) -> None:
        click.echo(printable(record.line()))

    records = SimBoard(flash).boot(max_boots, cut_at, timeout, heapsize,
                                   echo=_echo_device if verbose else None, on_boot=line)
    last = records[-1]
    if last.kind in ("reset", "panic", "wdt", "soft-reset", "power-cut"):
        click.echo(f"stopped after {len(records)} boots (--max-boots); "
                   "the board was still rebooting")


@sim.command("status")
@click.option("--flash", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sim_status(flash: Path, as_json: bool) -> None:
    """Slots with their firmware, both otadata entries, and the slot booted next."""
    board = SimBoard(flash)
    status = board.status()
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    click.echo(printable(f"board {status['board']}  running: "
                         f"{status['running'] or '(not booted yet)'}"))
    for slot in status["slots"]:
        fw = slot["firmware"]
        what = (f"v{fw['version']} ({fw['behaviour']}, {fw['length']} bytes)" if fw
                else f"no valid image: {slot['error']}")
        click.echo(printable(f"  {slot['label']:<6} 0x{slot['addr']:06x}  {what}"))
    for i, entry in enumerate(status["otadata"]):
        click.echo(printable(f"  otadata[{i}]  {entry['text']}"))
    click.echo(f"  boot_slot: {status['boot_slot']}")
    facts = board.boot_facts()
    cause = facts.get("reset_cause")
    if isinstance(cause, int):
        click.echo(f"  last reset cause: {CAUSE_NAMES.get(cause, '?')}")


@sim.command("counters")
@click.option("--flash", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True)
@click.option("--clear", is_flag=True, help="Reset all counters to zero.")
def sim_counters(flash: Path, clear: bool) -> None:
    """Flash erases and writes per partition since the board was created."""
    board = SimBoard(flash)
    if clear:
        board.clear_counters()
        click.echo("counters cleared")
        return
    counters = board.counters()
    layout = boards.load(board.identity["board"])
    click.echo(f"total flash operations: {counters.total}")
    for p in layout.partitions:
        erases, writes = counters.in_range(p.offset, p.size)
        worst = max(counters.erases[p.offset // 4096 : (p.offset + p.size) // 4096] or [0])
        click.echo(f"  {p.label:<10} erases {erases:>6}  writes {writes:>6}  "
                   f"max erases of one sector {worst}")


@sim.command("bootloader")
@click.option("--flash", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True)
@click.option("--once", is_flag=True,
              help="Stop after the first flashing (connect, write, reset) instead of Ctrl-C.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --once: give up after this many seconds without a flashing.")
def sim_bootloader(flash: Path, once: bool, timeout: float | None) -> None:
    """Hold the board in its ROM bootloader on a pseudo-terminal, for mpota flash.

    Like holding BOOT while pressing RESET: esptool (mpota flash) talks to the
    mock ESP32 ROM bootloader (esp32-mock-bootloader), which writes into the
    board's own flash file. Stop it, then power the board on with
    'mpota sim serial --flash FLASH' or 'mpota sim boot --flash FLASH'.
    """
    try:
        from .sim.bootloader import SimBootloader
    except ImportError as e:
        raise SimulatorError(
            f"mpota sim bootloader needs the mock ESP32 ROM bootloader ({e.name} is missing): "
            "pip install 'mpota[sim]'") from e

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    board = SimBoard(flash)

    def written(regions: list[tuple[int, int]]) -> None:
        what = ", ".join(f"0x{offset:06x}+{size}" for offset, size in regions)
        click.echo(f"flashed: {what} bytes written into {flash}")

    with SimBootloader(board, on_session=written) as loader:
        click.echo(f"board {board.identity['board']} in its ROM bootloader on {loader.port}: "
                   f"mpota flash --port {loader.port} --board {board.identity['board']} "
                   "FIRMWARE; " + ("stops after one flashing" if once else "Ctrl-C to stop"))
        try:
            if once:
                limit = timeout if timeout is not None else 24 * 3600.0
                if not loader.wait(1, limit) and loader.error is None:
                    raise SimulatorError(
                        f"nothing was flashed on {loader.port} in {limit:.0f} s; run mpota "
                        "flash against that port while this command waits")
            else:
                while loader.error is None:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        if loader.error is not None:
            raise SimulatorError(f"the simulated bootloader stopped: {loader.error}")
    click.echo(f"stopped; power the board on with: mpota sim serial --flash {flash}")


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


cli.add_command(serve_cmd)
cli.add_command(device_group)
cli.add_command(reports_cmd)
for _command in (status_cmd, provision_cmd, trigger_cmd, push_cmd):
    cli.add_command(_command)
sim.add_command(sim_serial_cmd)


def _usage_line(e: click.ClickException) -> str:
    """A click error as one line: the command, the problem, where help is."""
    message = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    if ctx is None:
        return f"mpota: error: {message}"
    return f"{ctx.command_path}: error: {message} (see '{ctx.command_path} --help')"


def main() -> None:
    """Entry point of the ``mpota`` console script.

    Every way a command ends maps to one exit code (errors.py): 0 success, 1
    refused or failed, 2 usage, 3 board unreachable, 130 interrupted; a failure
    is one line on stderr, never a traceback (MPOTA_DEBUG=1 shows one for an
    unexpected error).
    """
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("mpota: aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # 'mpota' or 'mpota sim' alone: the help
            e.show()
        else:
            click.echo(printable(_usage_line(e)), err=True)
        sys.exit(e.exit_code)
    except MpotaError as e:
        click.echo(f"mpota: error: {printable(' '.join(str(e).split()))}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("mpota: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:
        if os.environ.get("MPOTA_DEBUG"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        click.echo(printable(f"mpota: error: {where}{e.strerror or e}"), err=True)
        sys.exit(1)
    except Exception as e:  # a bug: still one line, and how to see more
        if os.environ.get("MPOTA_DEBUG"):
            raise
        click.echo(printable(f"mpota: internal error: {type(e).__name__}: {e}; run again "
                             "with MPOTA_DEBUG=1 for the traceback and report it"), err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
