# Simulated `machine` additions of the esp32 port: reset, reset_cause,
# unique_id, a hardware watchdog that really resets the board, and Timer.
#
# The watchdog is enforced from outside the process (the harness reads the
# deadline this module writes on every feed and kills the board when it
# passes), so it fires even when the program is stuck inside a C call.
#
# Timer: as on the esp32 port (machine_timer.c), a callback is not run in
# the interrupt but scheduled (micropython.schedule) and run by the VM
# between bytecodes, and while it sleeps (the sim's time.py; the board's
# mp_hal_delay_ms runs the scheduler too).  A thread per running timer does
# the ticking.  A soft reset (a new process) stops every timer, as on a board.
import _thread
import time

import micropython

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


_hw_timers = {}  # hardware timer id -> its cell: Timer(0) again is the same timer


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, **kwargs):
        if id < -1 or id > 3:
            raise ValueError("Timer(%d) doesn't exist, there are only 4 hardware timers" % id)
        if id >= 0:
            self._cell = _hw_timers.setdefault(id, [0])
        else:
            self._cell = [0]  # a virtual (esp_timer) timer of its own
        self._id = id
        if kwargs:
            self.init(**kwargs)

    def init(self, mode=PERIODIC, callback=None, period=-1, tick_hz=1000, freq=None, hard=False):
        if hard:
            raise ValueError("hard Timers are not implemented")
        ms = 1000 / freq if freq else period * 1000 // tick_hz
        if ms <= 0:
            raise ValueError("Timer period is too short for this timer")
        self._cell[0] += 1  # stops the thread of an earlier init
        _thread.start_new_thread(_tick, (self, self._cell, self._cell[0], ms, mode, callback))

    def deinit(self):
        self._cell[0] += 1

    def __repr__(self):
        return "Timer(%d)" % self._id


def _tick(timer, cell, generation, ms, mode, callback):
    while True:
        time.sleep_ms(int(ms) or 1)
        if cell[0] != generation:
            return
        if callback is not None:
            try:
                micropython.schedule(callback, timer)
            except RuntimeError:
                pass  # the schedule queue is full: this tick is lost, as on a board
        if mode == Timer.ONE_SHOT:
            return
