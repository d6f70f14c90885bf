# The device configuration, mpota.json on the board's filesystem, checked
# field by field so a mistake is named when the agent starts, not halfway
# through an update.  The device token may live in NVS ("mpota"/"token")
# instead of the file; NVS wins.
#
# Without an mpota server ("server", "device_id" and "token" all absent) the
# device installs releases from their URLs only: mpota.update(URL).
import json

from mpota.errors import ConfigError

PATH = "mpota.json"

# name: (type, default); a default of REQUIRED means the field must be present
REQUIRED = object()
_TOP = {
    "server": (str, None),
    "ca": (str, REQUIRED),
    "device_id": (str, None),
    "token": (str, None),
    "board": (str, REQUIRED),
    "chip_id": (int, 0),
    "version": (str, "0"),
    "version_code": (int, 0),
    "trusted_keys": (list, REQUIRED),
    "wifi": (dict, None),
    "network": (str, "agent"),
    "watchdog_ms": (int, 30000),
    "watchdog_after_confirm": (str, "agent"),
    "app_watchdog_ms": (int, None),
    "policy": (dict, {}),
    "health": (dict, {}),
    "download": (dict, {}),
}
_POLICY = {"auto_apply": (bool, True), "window": (str, None), "reboot_delay_s": (int, 0),
           "clock_trusted": (bool, False)}
_HEALTH = {"network": (bool, True), "server": (bool, True), "min_free_heap": (int, 8192),
           "timeout_s": (int, 30)}
_WIFI = {"ssid": (str, REQUIRED), "key": (str, None), "timeout_s": (int, 15),
         "keep": (bool, False)}
_DOWNLOAD = {"window": (int, 65536), "save_ms": (int, 1000), "retries": (int, 8),
             "stall_s": (int, 10), "backoff_ms": (int, 500), "backoff_max_ms": (int, 30000),
             "redirects": (int, 3), "max_rate": (int, 0), "duty_pct": (int, 100),
             "busy_wait_s": (int, 60)}


def _fill(where, data, table):
    if type(data) is not dict:
        raise ConfigError("%s must be a JSON object" % where)
    out = {}
    for name, (kind, default) in table.items():
        value = data.get(name)
        if value is None:
            if default is REQUIRED:
                raise ConfigError("%s: required field %r is missing" % (where, name))
            value = default
        elif type(value) is not kind:
            raise ConfigError("%s: %r must be %s, got %s"
                              % (where, name, kind.__name__, type(value).__name__))
        out[name] = value
    unknown = [k for k in data if k not in table]
    if unknown:
        raise ConfigError("%s: unknown field(s) %s" % (where, ", ".join(sorted(unknown))))
    return out


def _parse_window(text):
    # "HH:MM-HH:MM" (UTC) -> (start_minute, end_minute); may wrap midnight
    try:
        a, b = text.split("-")
        start = int(a[:2]) * 60 + int(a[3:5])
        end = int(b[:2]) * 60 + int(b[3:5])
        if len(a) != 5 or len(b) != 5 or a[2] != ":" or b[2] != ":" or start >= 1440 or end >= 1440:
            raise ValueError
    except (ValueError, IndexError):
        raise ConfigError("policy.window %r must look like 02:00-04:30 (UTC)" % text)
    return (start, end)


def parse(data, where=PATH):
    cfg = _fill(where, data, _TOP)
    cfg["policy"] = _fill(where + " policy", cfg["policy"], _POLICY)
    cfg["health"] = _fill(where + " health", cfg["health"], _HEALTH)
    cfg["download"] = _fill(where + " download", cfg["download"], _DOWNLOAD)
    if cfg["server"] is None:
        extra = [k for k in ("device_id", "token") if cfg[k] is not None]
        if extra:
            raise ConfigError("%s: %s given but no 'server': add the mpota server's URL, or "
                              "remove %s to update from release URLs only"
                              % (where, " and ".join(extra), " and ".join(extra)))
    elif not cfg["server"].startswith("https://"):
        raise ConfigError("%s: server %r must be an https:// URL (TLS is not optional)"
                          % (where, cfg["server"]))
    elif cfg["device_id"] is None:
        raise ConfigError("%s: 'server' is set but 'device_id' is missing: add the id from "
                          "`mpota device add` (or remove 'server' to update from release "
                          "URLs only)" % where)
    if not cfg["trusted_keys"]:
        raise ConfigError("%s: trusted_keys is empty: the agent would accept nothing" % where)
    wifi = cfg["wifi"]
    if wifi is not None:
        if type(wifi.get("ssid")) is not str:
            raise ConfigError("%s: wifi must be {\"ssid\": \"...\", \"key\": \"...\"}" % where)
        cfg["wifi"] = wifi = _fill(where + " wifi", wifi, _WIFI)
        if not 1 <= wifi["timeout_s"] <= 300:
            raise ConfigError("%s: wifi.timeout_s must be 1 to 300 seconds" % where)
    for name in ("network", "watchdog_after_confirm"):
        if cfg[name] not in ("agent", "app"):
            raise ConfigError("%s: %s must be \"agent\" or \"app\", not %r"
                              % (where, name, cfg[name]))
    if cfg["policy"]["window"] is not None:
        cfg["policy"]["window"] = _parse_window(cfg["policy"]["window"])
    if cfg["watchdog_ms"] < 1000:
        raise ConfigError("%s: watchdog_ms %d is too short for a health check (min 1000)"
                          % (where, cfg["watchdog_ms"]))
    if cfg["app_watchdog_ms"] is None:
        cfg["app_watchdog_ms"] = cfg["watchdog_ms"] * 10
    elif cfg["app_watchdog_ms"] < 1000:
        raise ConfigError("%s: app_watchdog_ms %d is too short (min 1000)"
                          % (where, cfg["app_watchdog_ms"]))
    d = cfg["download"]
    if d["window"] < 4096 or d["window"] % 4096:
        raise ConfigError("%s: download.window must be a multiple of 4096" % where)
    if d["max_rate"] < 0 or not 0 < d["duty_pct"] <= 100:
        raise ConfigError("%s: download.max_rate must be >= 0 (bytes/s, 0: no cap) and "
                          "download.duty_pct 1..100" % where)
    return cfg


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        raise ConfigError("cannot read %s on the board: provision it first" % path)
    except ValueError:  # UnicodeError: binary bytes in a text file
        raise ConfigError("%s on the board is not text: provision it again" % path)


def load_cas(path):
    """The pinned CA file (PEM or DER, one certificate or a bundle) as a list
    of DER certificates; ConfigError naming the file and the problem."""
    from mpota import ca

    try:
        return ca.certs(_read(path, "rb"))
    except ValueError as e:
        raise ConfigError("CA file %s: %s; put the CA certificate(s) there as PEM or DER"
                          % (path, e))


def load(path=PATH, nvs=None):
    try:
        data = json.loads(_read(path))
    except ValueError:
        raise ConfigError("%s is not valid JSON" % path)
    cfg = parse(data, path)
    cfg["cas"] = load_cas(cfg["ca"])
    keys = []
    for item in cfg["trusted_keys"]:
        if type(item) is not str:
            raise ConfigError("%s: trusted_keys entries must be strings" % path)
        keys.append(item if "BEGIN" in item else _read(item))
    cfg["trusted_pems"] = keys
    if cfg["server"] is None:
        return cfg  # release URLs only: no credentials to find
    if nvs is not None:
        buf = bytearray(128)
        try:
            n = nvs.get_blob("token", buf)
        except OSError:
            n = None  # no token in NVS: the file's token (if any) is used
        if n is not None:
            try:
                cfg["token"] = bytes(buf[:n]).decode()
            except ValueError:
                raise ConfigError("the token in NVS (mpota/token) is not text: provision "
                                  "the device again")
    if not cfg["token"]:
        raise ConfigError("no device token: put it in NVS (mpota/token) or in %s" % path)
    return cfg
