# Simulated `esp32` module: Partition and NVS, with the behaviour of
# MicroPython's ports/esp32/esp32_partition.c and esp32_nvs.c on top of
# ESP-IDF's esp_partition / esp_ota_ops.
import flashlayout
import simboard
from appimage import ImageError, validate
from simboard import esp_error

_BLOCK = const(4096)


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=_BLOCK):
        self._board = simboard.board()
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError("invalid block size")
        self.block_size = block_size
        if id == Partition.BOOT:
            part = _boot_partition(self._board)
        elif id == Partition.RUNNING:
            label = self._board.boot_facts().get("running")
            part = self._board.part(label) if label else None
        elif isinstance(id, flashlayout.PartitionInfo):
            part = id  # built by find() / get_next_update()
        elif isinstance(id, str):
            # esp_partition_find_first: app partitions first, then data
            part = _by_label(self._board, id, flashlayout.TYPE_APP) or \
                _by_label(self._board, id, flashlayout.TYPE_DATA)
        else:
            raise ValueError()
        if part is None:
            raise OSError(2)  # MP_ENOENT
        self._part = part

    @staticmethod
    def find(type=TYPE_APP, subtype=0xFF, label=None, block_size=_BLOCK):
        board = simboard.board()
        out = []
        for p in board.parts:
            if p.type != type or (subtype != 0xFF and p.subtype != subtype):
                continue
            if label is not None and p.label != label:
                continue
            out.append(Partition(p, block_size))
        return out

    def __repr__(self):
        p = self._part
        return "<Partition type=%u, subtype=%u, address=%u, size=%u, label=%s, encrypted=%u>" % (
            p.type, p.subtype, p.addr, p.size, p.label, p.encrypted)

    def __eq__(self, other):
        return isinstance(other, Partition) and other._part.addr == self._part.addr

    def info(self):
        p = self._part
        return (p.type, p.subtype, p.addr, p.size, p.label, p.encrypted)

    # esp_partition_read / erase_range / write bounds checks
    def _bounds(self, offset, length):
        if offset > self._part.size:
            raise esp_error(simboard.ESP_ERR_INVALID_ARG)
        if offset + length > self._part.size:
            raise esp_error(simboard.ESP_ERR_INVALID_SIZE)

    def _erase(self, offset, length):
        self._bounds(offset, length)
        if length % _BLOCK:
            raise esp_error(simboard.ESP_ERR_INVALID_SIZE)
        if offset % _BLOCK:
            raise esp_error(simboard.ESP_ERR_INVALID_ARG)
        self._board.check_writable(self._part.addr + offset, length)
        self._board.flash.erase(self._part.addr + offset, length)

    def readblocks(self, block_num, buf, offset=0):
        offset += block_num * self.block_size
        self._bounds(offset, len(buf))
        self._board.flash.read(self._part.addr + offset, buf)

    def writeblocks(self, block_num, buf, offset=None):
        addr = block_num * self.block_size
        if offset is None:
            # A simple write: erase first (the length must be whole sectors).
            self._erase(addr, len(buf))
        else:
            addr += offset
        self._bounds(addr, len(buf))
        self._board.check_writable(self._part.addr + addr, len(buf))
        self._board.flash.write(self._part.addr + addr, buf)

    def ioctl(self, cmd, arg):
        if cmd == 4:  # MP_BLOCKDEV_IOCTL_BLOCK_COUNT
            return self._part.size // self.block_size
        if cmd == 5:  # MP_BLOCKDEV_IOCTL_BLOCK_SIZE
            return self.block_size
        if cmd == 6:  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE
            if self.block_size != _BLOCK:
                return -22  # -MP_EINVAL, returned, not raised
            self._erase(arg * self.block_size, self.block_size)
            return 0
        if cmd in (1, 2, 3):  # INIT, DEINIT, SYNC
            return 0
        return None

    def set_boot(self):
        # esp_ota_set_boot_partition: the image is verified before anything else
        board = self._board
        p = self._part
        try:
            validate(lambda off, buf: board.flash.read(p.addr + off, buf), p.size, board.chip_id)
        except ImageError as e:
            print("E (sim) esp_image: %s" % e)
            raise esp_error(simboard.ESP_ERR_OTA_VALIDATE_FAILED)
        if p.type != flashlayout.TYPE_APP:
            raise esp_error(simboard.ESP_ERR_INVALID_ARG)
        if board.otadata is None:
            raise esp_error(simboard.ESP_ERR_NOT_FOUND)
        if p.subtype == flashlayout.SUBTYPE_FACTORY:
            # esp_ota_set_boot_partition(factory): erase all of otadata
            board.flash.erase(board.otadata.addr, board.otadata.size)
            return
        _rewrite_ota_data(board, p)

    def get_next_update(self):
        # esp_ota_get_next_update_partition(self)
        slots = self._board.slots
        if not slots:
            raise OSError(2)  # esp32_partition_new(NULL): MP_ENOENT
        nxt = slots[0]
        for i, s in enumerate(slots):
            if s.addr == self._part.addr:
                nxt = slots[(i + 1) % len(slots)]
                break
        return Partition(nxt, _BLOCK)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        # esp_ota_mark_app_valid_cancel_rollback -> esp_ota_current_ota_is_workable(true)
        board = simboard.board()
        if board.otadata is None:
            raise esp_error(simboard.ESP_ERR_NOT_FOUND)
        entries = board.read_otadata()
        active = flashlayout.active_entry(entries)
        if active < 0 or not board.slots:
            raise esp_error(simboard.ESP_FAIL)  # "Running firmware is factory"
        if entries[active].state != flashlayout.VALID:
            entries[active].state = flashlayout.VALID
            board.write_otadata(active, entries[active])


def _by_label(board, label, type_):
    for p in board.parts:
        if p.type == type_ and p.label == label:
            return p
    return None


def _boot_partition(board):
    # esp_ota_get_boot_partition: the slot otadata selects, else the first app
    if board.otadata is None or not board.slots:
        apps = [p for p in board.parts if p.type == flashlayout.TYPE_APP]
        return apps[0] if apps else None
    entries = board.read_otadata()
    active = flashlayout.active_entry(entries)
    if active < 0:
        for p in board.parts:
            if p.type == flashlayout.TYPE_APP and p.subtype == flashlayout.SUBTYPE_FACTORY:
                return p
        return board.slots[0]
    return board.slots[flashlayout.slot_for_seq(entries[active].seq, len(board.slots))]


def _rewrite_ota_data(board, part):
    # esp_rewrite_ota_data: the next seq that maps to this slot, in the other sector
    entries = board.read_otadata()
    count = len(board.slots)
    num = part.subtype - flashlayout.SUBTYPE_OTA_MIN
    if num >= count:
        raise esp_error(simboard.ESP_ERR_INVALID_ARG)
    active = flashlayout.active_entry(entries)
    if active >= 0:
        seq = entries[active].seq
        i = 0
        while seq > (num + 1) % count + i * count:
            i += 1
        target = 1 - active
        new_seq = (num + 1) % count + i * count
    else:
        target = 0
        new_seq = num + 1
    entry = entries[target]
    entry.seq = new_seq
    entry.state = flashlayout.NEW  # rollback is enabled in every MicroPython build
    entry.crc = flashlayout.seq_crc(new_seq)
    board.write_otadata(target, entry)


from simnvs import NVS  # noqa: E402,F401  (esp32.NVS)
