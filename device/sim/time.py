# Simulated `time`: the unix port's, except that sleeping lets scheduled
# callbacks (the sim's machine.Timer) run, as the esp32 port's
# mp_hal_delay_ms does: it sleeps in short slices and the VM runs what was
# scheduled between them.  The unix port's own sleep would hold every
# callback until it returns.
import sys

from micropython import const

_path = sys.path
sys.path = ()  # import the unix port's built-in time, not this file
try:
    from time import *  # noqa: F403
    import time as _unix
finally:
    sys.path = _path
del _path

_SLICE_MS = const(20)


def sleep_ms(ms):
    end = _unix.ticks_add(_unix.ticks_ms(), ms) if ms > 0 else 0
    while ms > 0:
        _unix.sleep_ms(ms if ms < _SLICE_MS else _SLICE_MS)
        ms = _unix.ticks_diff(end, _unix.ticks_ms())


def sleep(seconds):
    if seconds * 1000 > _SLICE_MS:
        sleep_ms(int(seconds * 1000))
    else:
        _unix.sleep(seconds)
