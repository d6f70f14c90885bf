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


def _mapped(addr):
    # ESP32 flash-mapped data (DROM) and instruction (IROM) address ranges
    return 0x3F400000 <= addr < 0x3F800000 or 0x400C2000 <= addr < 0x40C00000


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
        if _mapped(load) and (pos + 8) % _MMU_PAGE != load % _MMU_PAGE:
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
