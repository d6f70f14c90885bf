# Validation of an ESP32 app image in a slot, as esp_image_verify() does
# before set_boot() and as the bootloader does before it jumps to an app:
# magic, segment count, chip id, segments inside the partition, XOR
# checksum (seed 0xEF) and the appended SHA-256.
# Streams through the slot with a small buffer; runs on MicroPython and on
# CPython.
import hashlib
import struct

MAGIC = 0xE9
MAX_SEGMENTS = 16
HEADER = 24
CHECKSUM_SEED = 0xEF
APP_DESC_MAGIC = 0xABCD5432
SIM_MARKER = b"MPOTA-SIM:"
_BUF = 512


class ImageError(Exception):
    pass


class ImageInfo:
    def __init__(self):
        self.length = 0
        self.chip_id = None
        self.segments = 0
        self.hash_appended = False
        self.version = ""
        self.project = ""
        self.sim = None  # dict from the simulated firmware's descriptor


def _parse_sim(text):
    # "key=value;key=value" keeps this free of a json dependency on both sides
    out = {}
    for item in text.split(";"):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k] = v
    return out


def _desc(info, head):
    # esp_app_desc_t sits at the start of the first segment (file offset 0x20)
    if len(head) < 32 + 256:
        return
    magic = struct.unpack("<I", head[32:36])[0]
    if magic != APP_DESC_MAGIC:
        return
    info.version = bytes(head[48:80]).split(b"\x00")[0].decode()
    info.project = bytes(head[80:112]).split(b"\x00")[0].decode()
    tail = bytes(head[32 + 256 :])
    if tail.startswith(SIM_MARKER):
        text = tail[len(SIM_MARKER) :].split(b"\n")[0].decode()
        info.sim = _parse_sim(text)


_MMU_PAGE = 0x10000


# Flash-mapped data (DROM) and instruction (IROM) address ranges by image chip
# id (ESP-IDF soc.h / esptool's *_MAP_START/END): a segment loaded there must
# sit at the same offset in a 64 KiB MMU page as in flash.
_MAPS = {
    0: ((0x3F400000, 0x3F800000), (0x400C2000, 0x40C00000)),  # ESP32
    2: ((0x3F000000, 0x3FF80000), (0x40080000, 0x40B80000)),  # ESP32-S2
    5: ((0x3C000000, 0x3C800000), (0x42000000, 0x42800000)),  # ESP32-C3
    9: ((0x3C000000, 0x3E000000), (0x42000000, 0x44000000)),  # ESP32-S3
    12: ((0x3C000000, 0x3C400000), (0x42000000, 0x42400000)),  # ESP32-C2
    13: ((0x42000000, 0x43000000),),  # ESP32-C6: IROM then DROM, one range
}


def _mapped(addr, chip_id):
    return any(lo <= addr < hi for lo, hi in _MAPS.get(chip_id, _MAPS[0]))


def _fold(x):
    # XOR the bytes of x together: halve the width until one byte remains.
    width = _BUF
    while width > 1:
        width //= 2
        x = (x >> (8 * width)) ^ (x & ((1 << (8 * width)) - 1))
    return x


def validate(read, size, chip_id):
    """Check the image stored in a slot.

    read(offset, buf) fills buf from the slot; size is the slot size.
    Returns ImageInfo; raises ImageError saying what is wrong.
    """
    info = ImageInfo()
    head = bytearray(HEADER + 8 + 256 + 64)
    read(0, head)
    if head[0] != MAGIC:
        raise ImageError("bad magic 0x%02x (expected 0xe9): no app image" % head[0])
    info.segments = head[1]
    if info.segments == 0 or info.segments > MAX_SEGMENTS:
        raise ImageError("segment count %d outside 1..%d" % (info.segments, MAX_SEGMENTS))
    info.chip_id = head[12] | (head[13] << 8)
    if chip_id is not None and info.chip_id != chip_id:
        raise ImageError("chip id %d in image, this chip is %d" % (info.chip_id, chip_id))
    info.hash_appended = head[23] == 1
    _desc(info, head)

    sha = hashlib.sha256()
    buf = bytearray(_BUF)
    mv = memoryview(buf)
    folded = 0  # XOR of all segment bytes, kept as one wide integer
    pos = 0

    def take(n, into_sum):
        nonlocal pos, folded
        while n > 0:
            k = min(n, _BUF)
            if pos + k > size:
                raise ImageError("image runs past the end of the slot (0x%x bytes)" % size)
            read(pos, mv[:k])
            sha.update(mv[:k])
            if into_sum:
                folded ^= int.from_bytes(mv[:k], "little")
            pos += k
            n -= k

    take(HEADER, False)
    seg_head = bytearray(8)
    for _ in range(info.segments):
        if pos + 8 > size:
            raise ImageError("segment header past the end of the slot")
        read(pos, seg_head)
        load, seg_len = struct.unpack("<II", seg_head)
        if seg_len > size or seg_len % 4:
            raise ImageError("segment length 0x%x is not a multiple of 4 inside the slot" % seg_len)
        if _mapped(load, info.chip_id) and (pos + 8) % _MMU_PAGE != load % _MMU_PAGE:
            raise ImageError("segment at 0x%x: load address 0x%x not aligned to its flash offset"
                             % (pos, load))
        take(8, False)
        take(seg_len, True)
    checksum = _fold(folded) ^ CHECKSUM_SEED
    # Pad so that the checksum byte is the last of a 16-byte block.
    pad = 15 - (pos % 16)
    take(pad, False)
    last = bytearray(1)
    read(pos, last)
    take(1, False)
    if last[0] != checksum:
        raise ImageError("checksum 0x%02x stored, 0x%02x computed" % (last[0], checksum))
    if info.hash_appended:
        digest = sha.digest()
        stored = bytearray(32)
        if pos + 32 > size:
            raise ImageError("appended SHA-256 past the end of the slot")
        read(pos, stored)
        pos += 32
        if bytes(stored) != digest:
            raise ImageError("appended SHA-256 does not match the image")
    info.length = pos
    return info
