# The simulated board a MicroPython process runs on: its flash, partition
# table, identity and the facts of the current boot.  Shared by the sim's
# esp32, machine and network modules and by the simulated bootloader.
#
# The harness points MPOTA_SIM_FLASH at the flash file; everything else the
# board keeps lives in the directory FLASH + ".sim" beside it.
import json
import os

import flashlayout
from simflash import Flash, die

# esp_err_t codes the sim raises, as MicroPython's check_esp_err does.
ESP_FAIL = -1
ESP_ERR_NO_MEM = 0x101
ESP_ERR_INVALID_ARG = 0x102
ESP_ERR_INVALID_STATE = 0x103
ESP_ERR_INVALID_SIZE = 0x104
ESP_ERR_NOT_FOUND = 0x105
ESP_ERR_OTA_VALIDATE_FAILED = 0x1503
ERR_NAMES = {
    ESP_FAIL: "ESP_FAIL",
    ESP_ERR_NO_MEM: "ESP_ERR_NO_MEM",
    ESP_ERR_INVALID_ARG: "ESP_ERR_INVALID_ARG",
    ESP_ERR_INVALID_STATE: "ESP_ERR_INVALID_STATE",
    ESP_ERR_INVALID_SIZE: "ESP_ERR_INVALID_SIZE",
    ESP_ERR_NOT_FOUND: "ESP_ERR_NOT_FOUND",
    ESP_ERR_OTA_VALIDATE_FAILED: "ESP_ERR_OTA_VALIDATE_FAILED",
}


def esp_error(code):
    return OSError(-code, ERR_NAMES.get(code, "ESP_ERR_0x%x" % code))


def read_json(path, default=None):
    try:
        f = open(path)
    except OSError:
        return default
    try:
        return json.load(f)
    finally:
        f.close()


def write_json(path, value):
    # Atomic: a reader sees the old or the new file, never half of one.
    tmp = path + ".tmp"
    f = open(tmp, "w")
    try:
        json.dump(value, f)
    finally:
        f.close()
    os.rename(tmp, path)


class Board:
    def __init__(self, flash_path):
        self.flash_path = flash_path
        self.sim_dir = flash_path + ".sim"
        self.identity = read_json(self.sim_dir + "/board.json")
        if self.identity is None:
            raise OSError(2, "no simulated board at " + flash_path + " (run 'mpota sim new')")
        self.chip_id = self.identity["chip_id"]
        self._facts = None
        self.flash = Flash(flash_path, self.sim_dir)
        raw = bytearray(flashlayout.TABLE_MAX)
        self.flash.read(flashlayout.TABLE_ADDR, raw)
        self.parts = flashlayout.parse_table(raw)
        self._add_vfs()
        self.slots = flashlayout.ota_slots(self.parts)
        self.otadata = flashlayout.find_otadata(self.parts)

    def _add_vfs(self):
        # MicroPython's main.c registers a "vfs" partition (data, fat) from
        # the end of the last partition to the end of flash when the table
        # has none.  The sim keeps the filesystem in a host directory.
        for p in self.parts:
            if p.type == flashlayout.TYPE_DATA and p.label in ("vfs", "ffat"):
                return
        end = max(p.addr + p.size for p in self.parts)
        if end < self.flash.size:
            self.parts.append(flashlayout.PartitionInfo(
                flashlayout.TYPE_DATA, 0x81, end, self.flash.size - end, "vfs", 0))

    def check_writable(self, addr, length):
        """ESP-IDF aborts a write or erase that touches the partition table
        or the running app (esp_partition_main_flash_region_safe)."""
        running = self.part(self.boot_facts().get("running"))
        table_end = flashlayout.TABLE_ADDR + flashlayout.TABLE_MAX
        hits_table = addr <= table_end
        hits_app = running is not None and addr < running.addr + running.size and \
            addr + length > running.addr
        if hits_table or hits_app:
            print("abort() was called: write to 0x%x (%s) is not safe" % (
                addr, "partition table" if hits_table else "running app " + running.label))
            print("Guru Meditation Error: Core  1 panic'ed (abort)")
            self.die("panic")

    def boot_facts(self):
        """What the bootloader decided for this boot (written by simboot)."""
        if self._facts is None:
            self._facts = read_json(self.sim_dir + "/boot.json", {})
        return self._facts

    def set_boot_facts(self, facts):
        write_json(self.sim_dir + "/boot.json", facts)
        self._facts = facts

    def part(self, label):
        for p in self.parts:
            if p.label == label:
                return p
        return None

    # otadata, read and written as esp_ota_ops.c does

    def read_otadata(self):
        entries = []
        raw = bytearray(flashlayout.OTADATA_ENTRY_SIZE)
        for i in range(2):
            self.flash.read(self.otadata.addr + i * flashlayout.OTADATA_SECTOR, raw)
            entries.append(flashlayout.OtaEntry.unpack(raw))
        return entries

    def write_otadata(self, index, entry):
        # rewrite_ota_seq / write_otadata: erase the entry's sector, then write
        addr = self.otadata.addr + index * flashlayout.OTADATA_SECTOR
        self.flash.erase(addr, flashlayout.OTADATA_SECTOR)
        self.flash.write(addr, entry.pack())

    def die(self, reason):
        die(self.sim_dir, reason)


_board = None


def board():
    global _board
    if _board is None:
        path = os.getenv("MPOTA_SIM_FLASH")
        if not path:
            raise OSError(2, "MPOTA_SIM_FLASH is not set: run device code through 'mpota sim boot'")
        _board = Board(path)
    return _board
