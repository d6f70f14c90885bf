"""mpota push over the simulated serial line at 115200 baud: payload bytes per
second against the line's raw byte rate (8N1: baud / 10), one run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mpota_host import devtls, keys, release, technician
from mpota_host.firmware import write_image
from mpota_host.sim.harness import SimBoard
from mpota_host.sim.runner import REPO_DIR
from mpota_host.sim.serial import SerialBoard

BAUD = 115200
SIZE = 64 * 1024
BOARD = REPO_DIR / "boards" / "esp32-generic-4mb"


def run() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pair = keys.generate(work / "keys")
        fw1, fw2 = work / "v1.bin", work / "v2.bin"
        write_image(fw1, "1.0.0", "healthy", 64 * 1024)
        write_image(fw2, "2.0.0", "healthy", SIZE)
        rel = work / "rel"
        release.make_release(fw2, rel, "esp32-generic-4mb", "2.0.0", 2,
                             keys.load_private(pair.private))
        board = SimBoard.create(BOARD, fw1, work / "b.flash")
        # no server: a push needs none (server, device_id and token are optional together)
        ca_der = devtls.ensure(work / "tls").ca_der.read_bytes()
        config = {"ca": "ca.der", "board": "esp32-generic-4mb", "version": "1.0.0",
                  "version_code": 1, "trusted_keys": ["signing.pub.pem"],
                  "health": {"server": False, "network": False}}
        board.install_agent(config, {"ca.der": ca_der,
                                     "signing.pub.pem": pair.public.read_bytes()}, main_py="")
        print(f"push: {SIZE // 1024} KiB over a {BAUD} baud simulated serial line...", flush=True)
        with SerialBoard(board, baud=BAUD) as serial:
            time.sleep(0.5)
            with technician.connect(serial.port, BAUD) as link:
                report = technician.push_release(link, rel, BAUD, apply=False)
    line = BAUD / 10
    return "\n".join([
        f"## mpota push at {BAUD} baud (simulated line, one run)",
        "",
        "| payload | time | payload rate | line raw rate | share of line |",
        "|---|---|---|---|---|",
        f"| {report.sent_bytes} bytes | {report.seconds:.1f} s | {report.rate:.0f} B/s | "
        f"{line:.0f} B/s | {report.rate / line:.0%} |",
        "",
        "(base64 in raw-paste mode costs 25%; the rest is REPL round trips and flow control)",
    ])
