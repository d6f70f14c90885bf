# Interned names (qstrs) on the simulated board; used by simrun.
#
# Names a .mpy file brings are interned into pools on
# the GC heap: on an ESP32 the first pool has 20 entries and each next one
# doubles, 7 bytes an entry (4-byte pointer, 2-byte hash, 1-byte length).
# Here the simulator's own ~330 names (C code in ROM on a board) already fill
# those pools, so the agent's names would land in a 640-entry pool of 11-byte
# entries (7 KiB at once), a cost no board has.  So: room for the names the
# board's .mpy files can intern (MPOTA_SIM_NAMES, counted by the harness) is
# made before the budget is measured, and the budget is charged what those
# names cost on an ESP32 instead.  Their string bytes are charged as they come.
import gc

from micropython import const

_FIRST_POOL = const(20)
_ESP32_ENTRY = const(7)
_POOL_HEADER = const(16)


class _Names:
    pass


def esp32_cost(count):
    """Heap bytes `count` interned names take in an ESP32's qstr pools."""
    cost = 0
    alloc = _FIRST_POOL
    while count > 0:
        cost += (_POOL_HEADER + alloc * _ESP32_ENTRY + 15) // 16 * 16
        count -= alloc
        alloc *= 2
    return cost


def make_room(count):
    # intern placeholder names until a pool with `count` free entries exists
    room = 0
    i = 0
    while room < count:
        before = gc.mem_free()
        getattr(_Names, "sim%d" % i, None)  # interns the name
        i += 1
        drop = before - gc.mem_free()
        if drop > 2048:  # a new pool: 11 bytes an entry on this 64-bit port
            room = drop // 11 - 1
        else:
            room -= 1


