# Simulated esp32.NVS.  Values persist across boots and power cuts in
# FLASH.sim/nvs.json, replaced atomically on every change (ESP-IDF's NVS is
# itself power-fail safe: a change is either there or not).  The NVS page
# format inside the flash's nvs partition is not reproduced.
#
# As in ESP-IDF, nvs_set_* writes the key to flash at once (nvs_commit has
# nothing left to do): each set/erase of a key and each commit is one
# durable operation (simpower); a cut there loses that change only.
import simboard
import simpower
from simboard import esp_error
from simflash import die

ESP_ERR_NVS_NOT_FOUND = 0x1102
ESP_ERR_NVS_TYPE_MISMATCH = 0x1103
ESP_ERR_NVS_INVALID_NAME = 0x1108
ESP_ERR_NVS_KEY_TOO_LONG = 0x1109
ESP_ERR_NVS_INVALID_LENGTH = 0x110C
simboard.ERR_NAMES.update({
    ESP_ERR_NVS_NOT_FOUND: "ESP_ERR_NVS_NOT_FOUND",
    ESP_ERR_NVS_TYPE_MISMATCH: "ESP_ERR_NVS_TYPE_MISMATCH",
    ESP_ERR_NVS_INVALID_NAME: "ESP_ERR_NVS_INVALID_NAME",
    ESP_ERR_NVS_KEY_TOO_LONG: "ESP_ERR_NVS_KEY_TOO_LONG",
    ESP_ERR_NVS_INVALID_LENGTH: "ESP_ERR_NVS_INVALID_LENGTH",
})
_MAX_KEY = 15  # NVS_KEY_NAME_MAX_SIZE - 1
_MAX_BLOB = 508000  # the largest blob NVS (format v2) accepts


def _path():
    return simboard.board().sim_dir + "/nvs.json"


def _durable(kind, detail):
    sim_dir = simboard.board().sim_dir
    if simpower.op(sim_dir, kind, detail):
        die(sim_dir, "power-cut %s %s" % (kind, detail))


def _check_key(key):
    if not isinstance(key, str) or not key:
        raise esp_error(ESP_ERR_NVS_INVALID_NAME)
    if len(key) > _MAX_KEY:
        raise esp_error(ESP_ERR_NVS_KEY_TOO_LONG)


class NVS:
    def __init__(self, namespace):
        _check_key(namespace)
        self._ns = namespace

    def _load(self):
        return simboard.read_json(_path(), {})

    def _store(self, key, kind, value):
        _check_key(key)
        _durable("nvs-set", self._ns + "/" + key)
        data = self._load()
        data.setdefault(self._ns, {})[key] = [kind, value]
        simboard.write_json(_path(), data)

    def _get(self, key, kind):
        _check_key(key)
        item = self._load().get(self._ns, {}).get(key)
        if item is None:
            raise esp_error(ESP_ERR_NVS_NOT_FOUND)
        if item[0] != kind:
            raise esp_error(ESP_ERR_NVS_TYPE_MISMATCH)
        return item[1]

    def set_i32(self, key, value):
        if not -0x80000000 <= value <= 0x7FFFFFFF:
            raise OverflowError("value does not fit in i32")
        self._store(key, "i32", value)

    def get_i32(self, key):
        return self._get(key, "i32")

    def set_blob(self, key, value):
        if len(value) > _MAX_BLOB:
            raise esp_error(ESP_ERR_NVS_INVALID_LENGTH)
        self._store(key, "blob", bytes(value).hex())

    def get_blob(self, key, buffer):
        value = bytes.fromhex(self._get(key, "blob"))
        if len(value) > len(buffer):
            raise esp_error(ESP_ERR_NVS_INVALID_LENGTH)
        buffer[: len(value)] = value
        return len(value)

    def erase_key(self, key):
        _check_key(key)
        data = self._load()
        if key not in data.get(self._ns, {}):
            raise esp_error(ESP_ERR_NVS_NOT_FOUND)
        _durable("nvs-erase", self._ns + "/" + key)
        del data[self._ns][key]
        simboard.write_json(_path(), data)

    def commit(self):
        _durable("nvs-commit", self._ns)  # every change above is already durable
