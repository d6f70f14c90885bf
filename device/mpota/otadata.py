# Read the otadata partition the way the ESP-IDF bootloader does, to learn
# whether the running image is on probation (MicroPython exposes no
# esp_ota_get_state_partition).
import binascii
import struct

NEW = 0
PENDING_VERIFY = 1
VALID = 2
INVALID = 3
ABORTED = 4
UNDEFINED = 0xFFFFFFFF
NAMES = {NEW: "NEW", PENDING_VERIFY: "PENDING_VERIFY", VALID: "VALID", INVALID: "INVALID",
         ABORTED: "ABORTED", UNDEFINED: "UNDEFINED"}


def _valid(seq, state, crc):
    ok_crc = crc == binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF
    return seq != UNDEFINED and state not in (INVALID, ABORTED) and ok_crc


def read_entries(part):
    """[(seq, state, valid), (seq, state, valid)] from the otadata partition."""
    out = []
    raw = bytearray(32)
    for i in range(2):
        part.readblocks(i, raw)
        seq, _, state, crc = struct.unpack("<I20sII", raw)
        out.append((seq, state, _valid(seq, state, crc)))
    return out


def active(entries):
    """Index of the entry the bootloader follows (-1: none); ties go to 0."""
    best = -1
    for i, (seq, _, ok) in enumerate(entries):
        if ok and (best < 0 or seq > entries[best][0]):
            best = i
    return best


def running_state(entries, running_subtype, slot_count):
    """The otadata state of the running slot, or None when otadata does not
    point at it (fresh board, factory app, or the bootloader fell back)."""
    i = active(entries)
    if i < 0 or slot_count == 0:
        return None
    seq, state, _ = entries[i]
    if (seq - 1) % slot_count != running_subtype - 0x10:
        return None
    return state
