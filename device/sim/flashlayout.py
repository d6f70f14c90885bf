# What lives where on the simulated flash, read the way ESP-IDF reads it:
# the binary partition table at 0x8000 and the two otadata entries.
# Runs on MicroPython (the sim) and CPython (host status), so it uses only
# struct and binascii.
import binascii
import struct

TABLE_ADDR = 0x8000
TABLE_MAX = 0xC00
ENTRY_MAGIC = 0x50AA
MD5_MAGIC = 0xEBEB

TYPE_APP = 0
TYPE_DATA = 1
SUBTYPE_FACTORY = 0x00
SUBTYPE_OTA_MIN = 0x10
SUBTYPE_OTA_MAX = 0x1F
SUBTYPE_TEST = 0x20
SUBTYPE_DATA_OTA = 0x00
SUBTYPE_DATA_NVS = 0x02
FLAG_ENCRYPTED = 1

# otadata entry states (esp_ota_img_states_t)
NEW = 0
PENDING_VERIFY = 1
VALID = 2
INVALID = 3
ABORTED = 4
UNDEFINED = 0xFFFFFFFF
STATE_NAMES = {
    NEW: "NEW",
    PENDING_VERIFY: "PENDING_VERIFY",
    VALID: "VALID",
    INVALID: "INVALID",
    ABORTED: "ABORTED",
    UNDEFINED: "UNDEFINED",
}
OTADATA_ENTRY = "<I20sII"  # ota_seq, seq_label, ota_state, crc
OTADATA_ENTRY_SIZE = 32
OTADATA_SECTOR = 0x1000


class PartitionInfo:
    def __init__(self, type_, subtype, addr, size, label, flags):
        self.type = type_
        self.subtype = subtype
        self.addr = addr
        self.size = size
        self.label = label
        self.flags = flags

    @property
    def encrypted(self):
        return bool(self.flags & FLAG_ENCRYPTED)

    def is_ota_slot(self):
        return self.type == TYPE_APP and SUBTYPE_OTA_MIN <= self.subtype <= SUBTYPE_OTA_MAX


def parse_table(raw):
    """Entries of a binary partition table, in flash order."""
    parts = []
    for pos in range(0, len(raw) - 31, 32):
        magic = raw[pos] | (raw[pos + 1] << 8)
        if magic != ENTRY_MAGIC:
            break  # 0xEBEB (MD5) or 0xFFFF ends the entries
        _, type_, subtype, addr, size, label, flags = struct.unpack(
            "<HBBII16sI", bytes(raw[pos : pos + 32])
        )
        label = bytes(label).split(b"\x00")[0].decode()
        parts.append(PartitionInfo(type_, subtype, addr, size, label, flags))
    return parts


def ota_slots(parts):
    """OTA app partitions ordered by subtype, as esp_ota_ops counts them."""
    slots = [p for p in parts if p.is_ota_slot()]
    slots.sort(key=lambda p: p.subtype)
    return slots


def find_otadata(parts):
    for p in parts:
        if p.type == TYPE_DATA and p.subtype == SUBTYPE_DATA_OTA:
            return p
    return None


def seq_crc(seq):
    # bootloader_common_ota_select_crc: esp_rom_crc32_le(UINT32_MAX, &seq, 4)
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


class OtaEntry:
    def __init__(self, seq=UNDEFINED, state=UNDEFINED, crc=None, label=b"\xff" * 20):
        self.seq = seq
        self.state = state
        self.crc = seq_crc(seq) if crc is None else crc
        self.label = label

    @classmethod
    def unpack(cls, raw):
        seq, label, state, crc = struct.unpack(OTADATA_ENTRY, bytes(raw[:32]))
        return cls(seq, state, crc, label)

    def pack(self):
        return struct.pack(OTADATA_ENTRY, self.seq, self.label, self.state, self.crc)

    def crc_ok(self):
        return self.crc == seq_crc(self.seq)

    def valid(self):
        # bootloader_common_ota_select_valid
        return (
            self.seq != UNDEFINED
            and self.crc_ok()
            and self.state != INVALID
            and self.state != ABORTED
        )

    def state_name(self):
        return STATE_NAMES.get(self.state, "0x%08x" % self.state)

    def describe(self):
        if self.seq == UNDEFINED and self.state == UNDEFINED:
            return "empty"
        return "seq=%d state=%s%s" % (
            self.seq,
            self.state_name(),
            "" if self.crc_ok() else " (bad crc)",
        )


def active_entry(entries):
    """Index of the valid entry with the highest seq (-1 if none).

    bootloader_common_get_active_otadata: on equal seq the first wins.
    """
    best = -1
    for i, e in enumerate(entries):
        if e.valid() and (best < 0 or e.seq > entries[best].seq):
            best = i
    return best


def slot_for_seq(seq, slot_count):
    return (seq - 1) % slot_count
