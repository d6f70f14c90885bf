# Durable operations and power cuts across the whole board.
#
# A durable operation is anything that changes what survives a power cut:
#   flash  "erase" / "write" of one sector or span (simflash; torn when cut)
#   fs     "fs-open" (create or open a file for writing), "fs-write" (the
#          first write since the file was opened or last committed),
#          "fs-sync" / "fs-close" (the commit of the file's data),
#          "fs-rename", "fs-remove", "fs-mkdir", "fs-rmdir" (simfs)
#   NVS    "nvs-set" / "nvs-erase" of one key, "nvs-commit" (simnvs)
# Every one of them bumps ONE counter, so a test can arm a cut at the N-th
# durable operation and sweep every N of an update.  (simflash also keeps
# its own flash-only counter, counters.bin, which older sweeps index.)
#
# A cut at an operation kills the board before the operation lands, except
# a flash erase/write, which lands torn (see simflash).  What that leaves is
# what the real storage guarantees: LittleFS commits a file's data only on
# close/flush, and its rename is atomic (simfs); an NVS key is either its
# old or its new value.
#
# A cut can also be armed at the n-th flash read of an address range (a
# read changes nothing, but where the power goes matters: e.g. during the
# read-back check of a slot); only reads inside the range are counted.
#
# durable.bin beside the flash (little endian u32):
#   0: magic  4: operations so far  8: cut_at (0xFFFFFFFF = never)  12: reserved
#   16: reads counted  20: read cut_at (0xFFFFFFFF = never)  24: range start  28: end
# When FLASH.sim/ops.log exists, each operation is appended to it as
# "N kind detail" (the harness turns tracing on; it maps indices to names).
import struct

_MAGIC = const(0x4D50_444F)  # "MPDO"
_NEVER = const(0xFFFFFFFF)
FILE = "durable.bin"
TRACE = "ops.log"

_f = None
_cut = _NEVER
_total = 0
_trace = None
_u32 = bytearray(4)
_reads = None  # [counted, cut_at, start, end] while a read cut is armed


def _open(sim_dir):
    global _f, _cut, _total, _trace, _reads
    path = sim_dir + "/" + FILE
    try:
        _f = open(path, "r+b")
    except OSError:
        # a board made before durable operations were counted
        _f = open(path, "w+b")
        _f.write(struct.pack("<IIIIIIII", _MAGIC, 0, _NEVER, 0, 0, _NEVER, 0, 0))
    head = _f.read(32)
    _total, _cut = struct.unpack_from("<II", head, 4)
    if len(head) == 32 and struct.unpack_from("<I", head, 20)[0] != _NEVER:
        _reads = list(struct.unpack_from("<IIII", head, 16))
    try:
        _trace = open(sim_dir + "/" + TRACE, "r+")
        _trace.seek(0, 2)
    except OSError:
        _trace = None


def op(sim_dir, kind, detail=None):
    """Count one durable operation; True when power is lost during it."""
    global _total
    if _f is None:
        _open(sim_dir)
    _total += 1
    struct.pack_into("<I", _u32, 0, _total)
    _f.seek(4)
    _f.write(_u32)
    if _trace is not None:
        if type(detail) is int:
            detail = "0x%x" % detail
        _trace.write("%d %s %s\n" % (_total, kind, "" if detail is None else detail))
        _trace.flush()
    return _total == _cut  # (the unix port's files are unbuffered: nothing to flush)


def load(sim_dir):
    if _f is None:
        _open(sim_dir)


def read(addr, length):
    """Count a flash read; True when power is lost during it (load() first)."""
    r = _reads
    if r is None or addr >= r[3] or addr + length <= r[2]:
        return False
    r[0] += 1
    struct.pack_into("<I", _u32, 0, r[0])
    _f.seek(16)
    _f.write(_u32)
    return r[0] == r[1]
