"""The simulated board's REPL waits for input as a board's does: scheduled
callbacks (a machine.Timer feeding the watchdog) keep running meanwhile."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from helpers import BOARD_4MB, tool
from mpota_host.firmware import write_image
from mpota_host.sim.harness import SimBoard
from mpota_host.sim.serial import SerialBoard

FED_BY_A_TIMER = """\
import machine
wdt = machine.WDT(0, 1000)
fed = [0]
def feed(_):
    wdt.feed()
    fed[0] += 1
timer = machine.Timer(-1)
timer.init(period=200, callback=feed)
"""


def test_a_timer_keeps_the_watchdog_fed_while_the_repl_waits(tmp_path: Path) -> None:
    image = tmp_path / "v1.bin"
    write_image(image, "1.0.0", "healthy", 64 * 1024)
    board = SimBoard.create(BOARD_4MB, image, tmp_path / "b.flash")
    board.write_file("main.py", FED_BY_A_TIMER)
    with SerialBoard(board, baud=None) as serial:
        serial.wait_for_repl()
        time.sleep(3.5)  # more than three watchdog timeouts with nobody typing
        out = subprocess.run([tool("mpremote"), "connect", serial.port, "resume", "exec",
                              "print('FED', fed[0])"],
                             capture_output=True, text=True, timeout=60)
        assert serial.boots == [], serial.boots  # the watchdog never reset the board
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split("FED")[1].split()[0]) >= 10, out.stdout
