"""``make demo``: the whole update story on a simulated ESP32, with real TLS.

Keys are made, a board boots v1 with the mpota agent, v2 is released and
served over HTTPS; the agent downloads, verifies, reboots, passes probation
and confirms. Then v3, whose network never comes up, is released: the board
rolls back to v2 and the server records ROLLED_BACK. The run ends with a
summary table and exits non-zero if the board did anything else.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import TaskID

from . import keys, progress, provision, release
from .firmware import write_image
from .server.app import ServerHandle, start_server
from .server.store import add_device, reports
from .sim.harness import AGENT_MODULES, BootRecord, SimBoard

BOARD = "esp32-generic-4mb"
WORK = Path("demo")
SIZE = 1536 * 1024
DEVICE = "demo-board-1"


@dataclass
class Step:
    title: str
    expected: str
    seen: str

    @property
    def ok(self) -> bool:
        return self.expected == self.seen


def _say(text: str = "") -> None:
    print(text, flush=True)


_DOWNLOADED = re.compile(r"mpota: downloaded (\d+)%")


def _boot(board: SimBoard, max_boots: int, download: int | None = None) -> list[BootRecord]:
    """Boot and show the board's console; on a terminal the download (``download``
    bytes) is a bar driven by the progress the board reports."""
    out = progress.console()
    bar = progress.byte_bar(out)
    task: list[TaskID] = []

    def say(text: str) -> None:
        out.print(text, markup=False, highlight=False)

    def echo(line: str) -> None:
        seen = _DOWNLOADED.match(line)
        if seen and download:
            if not task:
                task.append(bar.add_task("    download", total=download))
            bar.update(task[0], completed=download * int(seen[1]) // 100)
        say("      | " + line)

    with bar:
        return board.boot(max_boots=max_boots, timeout=60, heapsize="64K",
                          frozen=AGENT_MODULES, echo=echo,
                          on_boot=lambda record: say("    " + record.line()))


def _settled(board: SimBoard, records: list[BootRecord]) -> str:
    states = "/".join(e["state"] for e in board.status()["otadata"])
    return f"{records[-1].slot} v{records[-1].version}, otadata {states}"


def _new_board(work: Path, server: ServerHandle, pair: keys.KeyPair, enc: keys.KeyPair,
               v1: Path) -> SimBoard:
    token = add_device(server.data, DEVICE, board="esp32-generic-4mb")
    board = SimBoard.create(BOARD, v1, work / "board.flash")
    config: dict[str, Any] = {
        "server": server.url, "ca": "mpota-ca.der", "device_id": DEVICE, "token": token,
        "board": "esp32-generic-4mb", "version": "1.0.0", "version_code": 100,
        "trusted_keys": ["signing.pub.pem"], "wifi": {"ssid": "demo", "key": "demo-key"},
        "watchdog_ms": 10000,
    }
    board.install_agent(config, {"mpota-ca.der": server.ca_der.read_bytes(),
                                 "signing.pub.pem": pair.public.read_bytes()})
    kid = provision.install_fleet_key(board.exec, enc.private)
    _say(f"    decryption key {kid} installed in the board's NVS (never in a release or log)")
    return board


def run(work: Path = WORK) -> tuple[list[Step], list[dict[str, Any]]]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    steps: list[Step] = []

    _say("== 1. Create the signing and encryption keys and three 1.5 MB firmware images")
    pair = keys.generate(work / "keys")
    key = keys.load_private(pair.private)
    enc = keys.generate(work / "keys", name="encryption")
    recipients = [keys.load_public(enc.public)]
    _say(f"    signing key {pair.key_id}: {pair.private} (private), {pair.public} (on devices)")
    _say(f"    fleet encryption key {enc.key_id}: {enc.private} (goes into devices' NVS)")
    images = {}
    for version, behaviour in (("1.0.0", "healthy"), ("2.0.0", "healthy"),
                               ("3.0.0", "health-fail")):
        images[version] = work / f"firmware-{version}.bin"
        write_image(images[version], version, behaviour, SIZE)
        _say(f"    {images[version]}: v{version} ({behaviour})")

    _say("\n== 2. Serve releases over HTTPS (dev CA) and provision a board running v1")
    releases = work / "releases"
    releases.mkdir()
    server = start_server(releases, work / "server", pubkey=pair.public)
    try:
        _say(f"    mpota serve: {server.url}, devices pin {server.ca_der}")
        board = _new_board(work, server, pair, enc, images["1.0.0"])
        _say(f"    board {DEVICE}: {board.flash}, agent installed in /lib/mpota")
        records = _boot(board, 1)
        steps.append(Step("v1 boots; the agent finds no update",
                          "ota_0 v1.0.0, otadata VALID/UNDEFINED", _settled(board, records)))

        _say("\n== 3. Release v2 (encrypted); the agent downloads and decrypts it, verifies, "
             "reboots and confirms it")
        release.make_release(images["2.0.0"], releases / "v2", "esp32-generic-4mb", "2.0.0",
                             200, key, security_counter=1, expires=release.parse_when("30d"),
                             encrypt_for=recipients)
        check = release.verify_release(releases / "v2", keys.load_public(pair.public),
                                       decrypt_with=keys.load_private(enc.private))
        plain = (releases / "v2" / "payload").read_bytes()[:64] == \
            images["2.0.0"].read_bytes()[:64]
        steps.append(Step("v2 on the server is ciphertext; the fleet key decrypts it",
                          "ciphertext, decrypts to the signed hash",
                          ("plaintext" if plain else "ciphertext")
                          + (", decrypts to the signed hash" if check.ok else ", BROKEN")))
        records = _boot(board, 3, download=_payload_size(releases / "v2"))
        steps.append(Step("v2 installed, passes probation, confirmed",
                          "ota_1 v2.0.0, otadata VALID/VALID", _settled(board, records)))

        _say("\n== 4. Release v3, whose Wi-Fi never comes up")
        release.make_release(images["3.0.0"], releases / "v3", "esp32-generic-4mb", "3.0.0",
                             300, key, security_counter=1, encrypt_for=recipients)
        records = _boot(board, 4, download=_payload_size(releases / "v3"))
        steps.append(Step("v3 fails its health check; the bootloader rolls back to v2",
                          "ota_1 v2.0.0, otadata ABORTED/VALID", _settled(board, records)))
        records = _boot(board, 1)
        steps.append(Step("v2 stays; the agent does not retry v3",
                          "ota_1 v2.0.0, otadata ABORTED/VALID", _settled(board, records)))
        history = reports(server.data, DEVICE)
        seen = [r["state"] for r in history]
        steps.append(Step("the server saw CONFIRMED for v2, then ROLLED_BACK for v3",
                          "CONFIRMED(200) ROLLED_BACK(300)",
                          " ".join(f"{r['state']}({r['target_version_code']})" for r in history
                                   if r["state"] in ("CONFIRMED", "ROLLED_BACK"))))
        _say(f"\n    server reports for {DEVICE}: {' -> '.join(seen)}")
    finally:
        server.stop()
    return steps, history


def _payload_size(reldir: Path) -> int:
    return (reldir / release.PAYLOAD).stat().st_size


def main() -> int:
    try:
        steps, history = run()
    except KeyboardInterrupt:
        print(f"mpota demo: interrupted; the server is stopped and what was made is in "
              f"{WORK}/ (the board: {WORK / 'board.flash'}); run 'make demo' to start over",
              file=sys.stderr, flush=True)
        return 130
    _say("\n== Server record (mpota reports)")
    for r in history:
        _say(f"    {r['time']}  {r['state']:<12} running {r['version_code']!s:<4} "
             f"target {r['target_version_code']!s:<4} {r['detail'] or ''}")
    width = max(len(s.title) for s in steps)
    _say("\n== Summary")
    _say(f"    {'step':<{width}}  {'expected':<36}  result")
    for s in steps:
        _say(f"    {s.title:<{width}}  {s.expected:<36}  {'ok' if s.ok else 'FAILED: ' + s.seen}")
    failed = [s for s in steps if not s.ok]
    _say("\nThe story happened as told." if not failed else f"\n{len(failed)} step(s) failed.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
