# Simulated `machine` additions of the esp32 port: reset, reset_cause,
# unique_id and a hardware watchdog that really resets the board.
#
# The watchdog is enforced from outside the process (the harness reads the
# deadline this module writes on every feed and kills the board when it
# passes), so it fires even when the program is stuck inside a C call.
import time

import simboard

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def reset():
    simboard.board().die("reset")


def soft_reset():
    # On a board this restarts the VM only; here the harness boots again
    # without a bootloader pass being visible to the program.
    simboard.board().die("soft-reset")


def reset_cause():
    return simboard.board().boot_facts().get("reset_cause", PWRON_RESET)


def unique_id():
    return bytes.fromhex(simboard.board().identity["mac"])


def freq(*args):
    return 160_000_000


def idle():
    time.sleep_ms(1)


def _wdt_path():
    return simboard.board().sim_dir + "/wdt"


class WDT:
    # One hardware watchdog: creating it again reconfigures it; it cannot be
    # stopped and lives until the next hard reset.

    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError()
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        self._timeout = timeout
        self.feed()

    def feed(self):
        deadline = time.time_ns() + self._timeout * 1_000_000
        simboard.write_json(_wdt_path(), {"timeout_ms": self._timeout, "deadline_ns": deadline})
