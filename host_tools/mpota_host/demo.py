"""``make demo``: the A/B update and rollback story on a simulated ESP32.

Each step prints what it does and what the board said; the run ends with a
summary table and exits non-zero if the board did not do what the story says.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .firmware import write_image
from .sim.harness import BootRecord, SimBoard

BOARD = Path(__file__).resolve().parents[2] / "boards" / "esp32-generic-4mb"
WORK = Path("demo")

# Until the mpota agent lands, the board runs this small probation script:
# arm the watchdog, check the network, confirm the image or reset.
PROBATION_MAIN = """\
import machine, network
from esp32 import Partition
machine.WDT(timeout=5000)
wlan = network.WLAN(network.STA_IF)
wlan.active(True)
wlan.connect("demo-ssid", "demo-key")
running = Partition(Partition.RUNNING).info()[4]
if wlan.isconnected():
    Partition.mark_app_valid_cancel_rollback()
    print("health check passed on %s: image confirmed" % running)
else:
    print("health check FAILED on %s (no network): resetting, the bootloader rolls back" % running)
    machine.reset()
machine.WDT(timeout=600000)  # stand down: the demo board idles at the REPL
"""
NO_CONFIRM_MAIN = """\
import machine
from esp32 import Partition
if Partition(Partition.RUNNING).info()[4] == "ota_1":
    print("this v2 build never confirms itself: resetting")
    machine.reset()
"""


@dataclass
class Step:
    title: str
    expected: str
    seen: str

    @property
    def ok(self) -> bool:
        return self.expected == self.seen


def _say(text: str) -> None:
    print(text, flush=True)


def _boot(board: SimBoard, max_boots: int = 4) -> list[BootRecord]:
    def show(record: BootRecord) -> None:
        _say("    " + record.line())

    return board.boot(max_boots=max_boots, timeout=30, echo=lambda line: _say("      | " + line),
                      on_boot=show)


def _settled(board: SimBoard, records: list[BootRecord]) -> str:
    status = board.status()
    states = "/".join(e["state"] for e in status["otadata"])
    last = records[-1]
    return f"{last.slot} v{last.version}, otadata {states}"


def run(work: Path = WORK) -> list[Step]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    steps: list[Step] = []

    _say("== 1. Build three simulated MicroPython firmware images (valid ESP32 app images)")
    v1 = work / "fw-v1.bin"
    v2 = work / "fw-v2.bin"
    v3 = work / "fw-v3.bin"
    for path, version, behaviour in ((v1, "1.0.0", "healthy"), (v2, "2.0.0", "healthy"),
                                     (v3, "3.0.0", "health-fail")):
        fw = write_image(path, version, behaviour, 1536 * 1024)
        _say(f"    {path}: v{fw.version}, {fw.behaviour}, {fw.size} bytes")

    _say("\n== 2. A new ESP32-generic 4 MiB board with v1 in ota_0; power on")
    board = SimBoard.create(BOARD, v1, work / "board.flash")
    records = _boot(board, 1)
    steps.append(Step("fresh board boots v1", "ota_0 v1.0.0, otadata VALID/UNDEFINED",
                      _settled(board, records)))

    _say("\n== 3. Write v2 into the other slot and set boot; the build never confirms itself")
    board.write_file("main.py", NO_CONFIRM_MAIN)
    board.clear_counters()
    _say("    " + board.stage(v2).output.strip())
    records = _boot(board, 3)
    steps.append(Step("unconfirmed v2 rolls back to v1", "ota_0 v1.0.0, otadata VALID/ABORTED",
                      _settled(board, records)))

    _say("\n== 4. Install a probation check (watchdog + network health check + confirm); "
         "update to v2 again")
    board.write_file("main.py", PROBATION_MAIN)
    _boot(board, 1)
    _say("    " + board.stage(v2).output.strip())
    records = _boot(board, 3)
    steps.append(Step("v2 passes its health check and is confirmed",
                      "ota_1 v2.0.0, otadata VALID/VALID", _settled(board, records)))
    records = _boot(board, 1)
    steps.append(Step("confirmed v2 survives a reboot", "ota_1 v2.0.0, otadata VALID/VALID",
                      _settled(board, records)))

    _say("\n== 5. Update to v3, whose network never comes up")
    _say("    " + board.stage(v3).output.strip())
    records = _boot(board, 3)
    steps.append(Step("v3 fails its health check; the bootloader rolls back to v2",
                      "ota_1 v2.0.0, otadata ABORTED/VALID", _settled(board, records)))

    counters = board.counters()
    erases = [counters.erases[i] for i in range(0x10000 // 4096, 0x310000 // 4096)]
    _say(f"\n    flash operations since step 3: {counters.total}; "
         f"most erases of one app sector: {max(erases)}")
    return steps


def main() -> int:
    steps = run()
    width = max(len(s.title) for s in steps)
    _say("\n== Summary")
    _say(f"    {'step':<{width}}  {'expected':<38}  result")
    for s in steps:
        mark = "ok" if s.ok else f"FAILED (saw {s.seen})"
        _say(f"    {s.title:<{width}}  {s.expected:<38}  {mark}")
    failed = [s for s in steps if not s.ok]
    _say("\nThe story happened as told." if not failed else f"\n{len(failed)} step(s) failed.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
