# Entry point of every process on the simulated board.
#
#   micropython -m simrun simboot [--status]   one power-on (bootloader + firmware)
#   micropython -m simrun simstage FIRMWARE    stage an image as an update would
#   micropython -m simrun path/to/script.py    run a script as the running firmware
#
# On a real ESP32 the esp32, machine and network modules are C code in flash
# and cost no GC heap.  Here they are Python, so they are loaded first and,
# when MPOTA_SIM_HEAP_BUDGET is set, ballast takes the rest of the heap away:
# device code then finds its budget free, in one piece, as on a fresh board.
# Before any device code runs, simfs gives the board's filesystem LittleFS's
# behaviour across power cuts (open() and os are wrapped; see simfs).
# MPOTA_SIM_TRACE=FILE turns on the benchmarks' event counters (simtrace).
import gc
import os
import sys

import esp32  # noqa: F401  (built into the firmware on a board)
import machine  # noqa: F401
import network  # noqa: F401
import simboard
import simfs

_ballast = []
_SLACK = const(96)


def _largest_block():
    lo, hi = 0, gc.mem_free()
    while hi - lo > 64:
        mid = (lo + hi) // 2
        try:
            probe = bytearray(mid)
            del probe
            lo = mid
        except MemoryError:
            hi = mid
    return lo


_frozen = {}  # name -> module: frozen modules stay alive whatever the agent drops
_import = __import__


def _frozen_import(name, *args):
    # On a board, importing a frozen module again after `del sys.modules[...]`
    # finds its code in flash; here the preloaded module object is put back
    # (it was never freed: its memory is outside the heap budget, as in flash).
    for full, module in _frozen.items():
        if full not in sys.modules:
            sys.modules[full] = module
            parent, _, child = full.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, module)
    return _import(name, *args)


def _preload():
    # Modules frozen into the firmware: on a board their code lives in flash.
    names = os.getenv("MPOTA_SIM_FROZEN")
    if names:
        for name in names.split(","):
            __import__(name)
            _frozen[name] = sys.modules[name]
        import builtins

        builtins.__import__ = _frozen_import


def hold_heap():
    _preload()
    budget = os.getenv("MPOTA_SIM_HEAP_BUDGET")
    if not budget:
        return
    budget = int(budget)
    names = int(os.getenv("MPOTA_SIM_NAMES") or 0)
    if names:
        import simnames

        simnames.make_room(names)
        budget -= simnames.esp32_cost(names)  # what the names take on a board
    gc.collect()
    if gc.mem_free() < budget:
        raise MemoryError("the simulator needs %d more bytes of heap" % (budget - gc.mem_free()))
    # Slots for the small blocks that will fill the holes, taken before the
    # budget is carved out (a list growing while it fills would eat into it).
    holes = [None] * ((gc.mem_free() - budget) // 64 + 16)
    _ballast.append(holes)
    # The largest free block is the heap's tail: keep its last `budget` bytes.
    tail = _largest_block()
    gc.collect()
    if tail > budget + 256:
        _ballast.append(bytearray(tail - budget - 64))
    # Fill the holes the sim's loading left (first fit puts small blocks there),
    # then give back any overshoot: device code finds the budget free, to
    # within a block or two.
    used = 0
    for _ in range(8):
        gc.collect()
        excess = gc.mem_free() - budget
        if -_SLACK <= excess <= _SLACK:
            break
        if excess > 0:
            for _ in range(min(excess // 64, len(holes) - used)):
                holes[used] = bytearray(32)  # 64 bytes with its object header here
                used += 1
        else:
            for _ in range(min(-excess // 64 + 1, used)):
                used -= 1
                holes[used] = None


def run_script(path, ns):
    with open(path) as f:
        src = f.read()
    exec(compile(src, path, "exec"), ns)


def main():
    target = sys.argv[1]
    sys.argv.pop(0)
    board = simboard.board()
    simfs.install(board.sim_dir)  # LittleFS's power-cut behaviour, before any device code
    trace = os.getenv("MPOTA_SIM_TRACE")
    if trace:
        import simtrace

        simtrace.install(trace)
    if target.endswith(".py"):
        os.chdir(board.sim_dir + "/fs")
        sys.path[:] = ["", "lib"] + sys.path
        hold_heap()
        if os.getenv("MPOTA_SIM_DRIVER") == "asyncio":
            import simdriver

            simdriver.install()
        run_script(target, {"__name__": "__main__"})
    else:
        __import__(target).main(hold_heap)


main()
