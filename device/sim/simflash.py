# The simulated SPI NOR flash behind every other sim module.
#
# One file holds the whole flash, laid out as on a real board.  NOR rules:
# erase sets a 4096-byte sector to 0xFF, a write can only clear bits (the
# stored byte becomes old & new).  Every erase and write is counted per
# sector in a counters file beside the flash, and the N-th operation can be
# made to lose power half-way through: the operation is torn and the process
# dies at once, as a board does when its supply drops.  Each erase and
# write is also one of the board's durable operations (simpower), so a cut
# can be armed by flash index (counters.bin) or by durable index.
#
# Counters file layout (little endian u32):
#   0: magic  4: total ops  8: cut_at (0xFFFFFFFF = never)  12: reserved
#   16 + 8*sector: erases, writes
#
# Timing (off by default): with MPOTA_SIM_FLASH_TIMING=datasheet every
# sector erase and every 256-byte page program holds the VM for the flash
# chip's typical time, =max for its worst case.  The figures are Winbond
# W25Q32JV's (a common ESP32 module flash; datasheet rev. F, 2017, "AC
# Electrical Characteristics"): tSE (4 KB sector erase) 45 ms typical /
# 400 ms max, tPP (page program) 0.4 ms typical / 3 ms max; the W25Q32FV and
# GD25Q32 are alike (the FV's tPP is 0.7 ms typical).  On a board
# esp32.Partition.writeblocks is one C call (esp_partition_erase_range, then
# esp_partition_write): no other Python runs meanwhile, so the wait here is
# time.sleep_us, one C call too (not the sim's sleep_ms, which runs scheduled
# callbacks).  Reads stay untimed (4 KiB at 40-80 MHz QIO is ~0.1 ms).
import os
import struct
import time

import simpower

SECTOR = const(4096)
_CHUNK = const(4096)  # sim memory is outside the device budget (see simrun)
_MAGIC = const(0x4D50_4643)  # "MPFC"
_HDR = const(16)
_NEVER = const(0xFFFFFFFF)

# Exit reasons the harness reads after the process died.
EXIT_FILE = "exit"

# MPOTA_SIM_FLASH_TIMING: (sector erase us, page program us)
TIMINGS = {"datasheet": (45000, 400), "max": (400000, 3000)}
PAGE = const(256)


def timing():
    """(erase us per sector, program us per page) from MPOTA_SIM_FLASH_TIMING,
    or None (off: the default).  An unknown value is refused in one line."""
    name = os.getenv("MPOTA_SIM_FLASH_TIMING")
    if not name or name == "off":
        return None
    if name not in TIMINGS:
        raise ValueError("MPOTA_SIM_FLASH_TIMING=%s: use one of %s (or unset it)"
                         % (name, ", ".join(sorted(TIMINGS))))
    return TIMINGS[name]


def _hard_kill():
    # A power cut or a reset must not run finally blocks or atexit hooks:
    # kill our own process (the shell's parent) with SIGKILL.
    os.system("kill -9 $PPID")
    # Not reached; if kill is missing, do not let the caller continue.
    while True:
        pass


def die(sim_dir, reason):
    """Record why the board stopped, then stop it at once."""
    f = open(sim_dir + "/" + EXIT_FILE, "w")
    f.write(reason)
    f.close()
    _hard_kill()


class Flash:
    """Byte-addressed NOR flash backed by a file, with op counters."""

    def __init__(self, path, sim_dir):
        self.path = path
        self.sim_dir = sim_dir
        self._f = open(path, "r+b")
        self._f.seek(0, 2)
        self.size = self._f.tell()
        self._c = open(sim_dir + "/counters.bin", "r+b")
        self._ff = b"\xff" * _CHUNK
        self._old = bytearray(_CHUNK)
        self._u32 = bytearray(4)
        self.timing = timing()
        simpower.load(sim_dir)

    def _counter(self, pos):
        self._c.seek(pos)
        self._c.readinto(self._u32)
        return struct.unpack("<I", self._u32)[0]

    def _bump(self, pos):
        n = self._counter(pos) + 1
        self._c.seek(pos)
        self._c.write(struct.pack("<I", n))
        return n

    def _account(self, addr, length, kind):
        # kind: 0 erase, 1 write. Returns True if power is lost in this op.
        first = addr // SECTOR
        last = (addr + max(length, 1) - 1) // SECTOR
        for s in range(first, last + 1):
            self._bump(_HDR + 8 * s + 4 * kind)
        total = self._bump(4)
        durable = simpower.op(self.sim_dir, "write" if kind else "erase", addr)
        return total == self._counter(8) or durable

    def _check_range(self, addr, length):
        if addr < 0 or length < 0 or addr + length > self.size:
            raise ValueError("flash access 0x%x+0x%x outside 0x%x bytes"
                             % (addr, length, self.size))

    def read(self, addr, buf):
        self._check_range(addr, len(buf))
        if simpower.read(addr, len(buf)):
            die(self.sim_dir, "power-cut read 0x%x" % addr)
        self._f.seek(addr)
        n = self._f.readinto(buf)
        if n != len(buf):
            raise OSError(5, "short flash read")

    def erase(self, addr, length):
        """Erase whole sectors; addr and length must be sector aligned."""
        self._check_range(addr, length)
        if addr % SECTOR or length % SECTOR:
            raise ValueError("unaligned erase")
        for sector_addr in range(addr, addr + length, SECTOR):
            cut = self._account(sector_addr, SECTOR, 0)
            # A torn erase leaves the first half erased, the rest as it was.
            end = sector_addr + (SECTOR // 2 if cut else SECTOR)
            self._f.seek(sector_addr)
            pos = sector_addr
            while pos < end:
                k = min(_CHUNK, end - pos)
                self._f.write(self._ff if k == _CHUNK else self._ff[:k])
                pos += k
            if cut:
                die(self.sim_dir, "power-cut erase 0x%x" % sector_addr)
            if self.timing:
                time.sleep_us(self.timing[0])

    def write(self, addr, data):
        """NOR write: every stored byte becomes old & new."""
        n = len(data)
        self._check_range(addr, n)
        cut = self._account(addr, n, 1)
        if cut:
            n = n // 2  # a torn write lands only its first half
        # Allocation-free in the common case (writing erased flash): the sim
        # runs inside the device's heap budget.
        mv = memoryview(data)
        old = self._old
        pos = 0
        while pos < n:
            k = min(_CHUNK, n - pos)
            o = old if k == _CHUNK else memoryview(old)[:k]
            self._f.seek(addr + pos)
            self._f.readinto(o)
            chunk = mv[pos : pos + k]
            if o != (self._ff if k == _CHUNK else self._ff[:k]):
                # Programming can only clear bits.
                merged = int.from_bytes(o, "big") & int.from_bytes(chunk, "big")
                chunk = merged.to_bytes(k, "big")
            self._f.seek(addr + pos)
            self._f.write(chunk)
            pos += k
        if cut:
            die(self.sim_dir, "power-cut write 0x%x" % addr)
        if self.timing and n:
            # every 256-byte page the write touches is programmed
            time.sleep_us(self.timing[1] * ((addr + n - 1) // PAGE - addr // PAGE + 1))

    def close(self):
        self._f.close()
        self._c.close()
