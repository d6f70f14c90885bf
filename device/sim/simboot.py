# One power-on of the simulated board: the bootloader picks and checks an
# app, then "the firmware" runs: it behaves as its image says (healthy,
# health-fail, crash, hang) and executes boot.py and main.py from the
# board's filesystem like MicroPython's esp32 port does.
#
# Run by the host harness (mpota_host.sim) as:  micropython -m simrun simboot
# with MPOTA_SIM_FLASH=<flash file> and MPOTA_SIM_RESET_CAUSE=<int>;
# MPOTA_SIM_SOFT=1 after a soft reset (the bootloader does not run again).
# "simboot --status" only reports what the bootloader would do.
import json
import os
import sys
import time

import bootloader
import simboard
from appimage import ImageError


def log(msg):
    print("I (boot) " + msg)


def quiet(msg):
    pass


def run_file(name, ns):
    # pyexec_file_if_exists: an exception is printed, the boot goes on
    try:
        f = open(name)
    except OSError:
        return
    try:
        src = f.read()
    finally:
        f.close()
    try:
        exec(compile(src, name, "exec"), ns)
    except SystemExit:
        # sys.exit() in boot.py/main.py: a soft reset on the board
        simboard.board().die("soft-reset")
    except BaseException as e:
        sys.print_exception(e)


def freeze():
    # A hung firmware: it stops doing anything.  Only an armed watchdog
    # (enforced by the harness) gets the board out of here.
    while True:
        time.sleep(1)


def status(board):
    slots = []
    for part in board.slots:
        info = bootloader.check(board, part)
        entry = {"label": part.label, "addr": part.addr, "size": part.size,
                 "firmware": None, "error": None}
        if isinstance(info, ImageError):
            entry["error"] = str(info)
        else:
            fw = info.sim or {}
            entry["firmware"] = {"version": info.version, "length": info.length,
                                 "behaviour": fw.get("behaviour")}
        slots.append(entry)
    otadata = []
    if board.otadata is not None:
        for e in board.read_otadata():
            otadata.append({"seq": e.seq, "state": e.state_name(), "crc_ok": e.crc_ok(),
                            "valid": e.valid(), "text": e.describe()})
    start, initial = bootloader.select(board, quiet, write=False)
    part, _ = bootloader.load(board, start, initial, quiet, write=False)
    print("STATUS " + json.dumps({"slots": slots, "otadata": otadata,
                                  "boot_slot": part.label if part else None}))


def bootloader_stage(board):
    start, initial = bootloader.select(board, log)
    part, info = bootloader.load(board, start, initial, log)
    if part is None:
        log("no bootable app partitions in the partition table")
        board.die("no-app")
    fw = info.sim or {}
    behaviour = fw.get("behaviour", "healthy")
    log("loaded app from %s at 0x%x: version %s (%s)" % (
        part.label, part.addr, info.version or "?", behaviour))
    return {"running": part.label,
            "firmware": {"version": info.version, "behaviour": behaviour,
                         "length": info.length}}


def main(hold_heap):
    board = simboard.board()
    if len(sys.argv) > 1 and sys.argv[1] == "--status":
        status(board)
        return
    raw = bool(os.getenv("MPOTA_SIM_RAW"))
    if os.getenv("MPOTA_SIM_SOFT"):
        facts = board.boot_facts()
        print("MPY: soft reboot")
    else:
        facts = bootloader_stage(board)
    facts["reset_cause"] = int(os.getenv("MPOTA_SIM_RESET_CAUSE") or 1)
    board.set_boot_facts(facts)
    behaviour = facts["firmware"]["behaviour"]
    if behaviour == "crash":
        print("Guru Meditation Error: Core  1 panic'ed (LoadProhibited). Exception was unhandled.")
        board.die("panic")
    os.chdir(board.sim_dir + "/fs")
    sys.path[:] = ["", "lib"] + sys.path
    hold_heap()
    if os.getenv("MPOTA_SIM_DRIVER") == "asyncio":
        import simdriver

        simdriver.install()
    ns = {"__name__": "__main__"}
    if os.getenv("MPOTA_SIM_SERIAL"):
        # from here on Ctrl-C interrupts Python code (the bootloader cannot be)
        with open(board.sim_dir + "/serial-ready", "w") as f:
            f.write("1")
    run_file("boot.py", ns)
    if behaviour == "hang":
        freeze()
    if not raw:  # pyexec runs main.py only when the board is in the friendly REPL
        run_file("main.py", ns)
    if os.getenv("MPOTA_SIM_SERIAL"):
        import simrepl

        simrepl.serve(ns, raw)
    board.die("repl")
