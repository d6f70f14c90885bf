# The ESP-IDF second stage bootloader's choice of app, with
# CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE=y as in every MicroPython build
# (bootloader_utility.c: get_selected_boot_partition, load_boot_image).
import flashlayout as fl
from appimage import ImageError, validate

FACTORY_INDEX = -1


def _invalid(e):
    # bootloader_common_ota_select_invalid
    return e.seq == fl.UNDEFINED or e.state == fl.INVALID or e.state == fl.ABORTED


def _factory(board):
    for p in board.parts:
        if p.type == fl.TYPE_APP and p.subtype == fl.SUBTYPE_FACTORY:
            return p
    return None


def _test(board):
    for p in board.parts:
        if p.type == fl.TYPE_APP and p.subtype == fl.SUBTYPE_TEST:
            return p
    return None


def select(board, log, write=True):
    """Index of the slot to try first (FACTORY_INDEX for factory), and
    whether otadata still holds its initial contents.  With write=False it
    only predicts (used by 'mpota sim status')."""
    if board.otadata is None:
        return FACTORY_INDEX, False
    entries = board.read_otadata()
    log("otadata[0] %s, otadata[1] %s" % (entries[0].describe(), entries[1].describe()))
    for i in range(2):
        if entries[i].state == fl.PENDING_VERIFY:
            # the app booted last time never confirmed itself: roll it back
            entries[i].state = fl.ABORTED
            log("otadata[%d] was PENDING_VERIFY: marked ABORTED (rollback)" % i)
            if write:
                board.write_otadata(i, entries[i])
    count = len(board.slots)
    if (_invalid(entries[0]) and _invalid(entries[1])) or count == 0:
        if _factory(board):
            return FACTORY_INDEX, False
        initial = all(e.seq == fl.UNDEFINED or not e.crc_ok() for e in entries)
        return 0, initial
    active = fl.active_entry(entries)
    if active < 0:
        log("ota data partition invalid, will try all partitions")
        return FACTORY_INDEX, False
    index = fl.slot_for_seq(entries[active].seq, count)
    if entries[active].state == fl.NEW:
        entries[active].state = fl.PENDING_VERIFY
        log("otadata[%d] NEW -> PENDING_VERIFY (the app must confirm itself)" % active)
        if write:
            board.write_otadata(active, entries[active])
    return index, False


def _partition(board, index):
    if index == FACTORY_INDEX:
        return _factory(board)
    return board.slots[index]


def check(board, part):
    """ImageInfo of the app in part, or the ImageError that stops it booting."""
    try:
        return validate(lambda off, buf: board.flash.read(part.addr + off, buf), part.size,
                        board.chip_id)
    except ImageError as e:
        return e


def _try(board, part, log):
    if part is None:
        return None
    info = check(board, part)
    if isinstance(info, ImageError):
        log("%s at 0x%x: not bootable: %s" % (part.label, part.addr, info))
        return None
    return info


def load(board, start, initial, log, write=True):
    """Try start, then down to factory, then the later slots, then test.

    Returns (partition, ImageInfo) or (None, None) when nothing boots."""
    order = list(range(start, FACTORY_INDEX - 1, -1)) + list(range(start + 1, len(board.slots)))
    for index in order:
        part = _partition(board, index)
        info = _try(board, part, log)
        if info is not None:
            if index > FACTORY_INDEX and initial and write:
                # set_actual_ota_seq: a fresh otadata gets seq for this slot
                entry = fl.OtaEntry(index + 1, fl.VALID)
                board.write_otadata(0, entry)
                log("set actual ota_seq=%d in otadata[0]" % entry.seq)
            return part, info
    part = _test(board)
    info = _try(board, part, log)
    if info is not None:
        log("falling back to test app as last resort")
        return part, info
    return None, None
