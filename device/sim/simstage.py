# Stage a firmware file into the next OTA slot and set boot, the way an
# update does it: Partition(RUNNING).get_next_update(), whole-block
# writeblocks() from one 4096-byte buffer, then set_boot().
# Usage (through the harness): micropython -m simrun simstage FIRMWARE
import sys

import bootloader
import simboard
from esp32 import Partition

_BLOCK = const(4096)


def running_label(board):
    # A board that never booted runs what the bootloader would pick.
    label = board.boot_facts().get("running")
    if label:
        return label
    start, initial = bootloader.select(board, lambda m: None, write=False)
    part, _ = bootloader.load(board, start, initial, lambda m: None, write=False)
    board.boot_facts()["running"] = part.label
    return part.label


def main(hold_heap):
    path = sys.argv[1]
    board = simboard.board()
    hold_heap()
    running = Partition(running_label(board))
    target = running.get_next_update()
    buf = bytearray(_BLOCK)
    mv = memoryview(buf)
    block = 0
    f = open(path, "rb")
    try:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            if n < _BLOCK:
                for i in range(n, _BLOCK):
                    buf[i] = 0xFF
            target.writeblocks(block, mv)
            block += 1
    finally:
        f.close()
    target.set_boot()
    print("staged %s into %s (%d blocks), boot set" % (path, target.info()[4], block))

