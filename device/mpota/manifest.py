# Release manifests, after their signature and their strict JSON syntax are
# checked (mpota.verify does that first, with mpota.syntax): the field
# table, and whether this device may install the release.  No I/O here.
# Messages are short and name the value seen; the host's `mpota verify`
# explains at length.
#
#   fields = parse(raw, signer_key_id)   # ManifestError "bad-manifest"
#   judge(fields, facts)                 # ManifestError with its code
import json

from mpota.errors import ManifestError

_FORMAT = const(1)

# name: (type, required, low, high): the value's range for an int, its length
# for a str.  The host's release.FIELDS is the same table (a test keeps them equal).
_FIELDS = {
    "format": (int, True, 0, 255),
    "board": (str, True, 1, 32),
    "chip_id": (int, True, 0, 0xFFFF),
    "version": (str, True, 1, 31),
    "version_code": (int, True, 0, 0x7FFFFFFF),
    "security_counter": (int, True, 0, 0x7FFFFFFF),
    "size": (int, True, 1, 0x7FFFFFFF),
    "sha256": (str, True, 1, 64),
    "payload_size": (int, True, 1, 0x7FFFFFFF),
    "payload_sha256": (str, True, 1, 64),
    "created": (str, True, 1, 20),
    "expires": (str, False, 1, 20),
    "key_id": (str, True, 1, 16),
    "encryption": (dict, False, 0, 0),
    "min_version_code": (int, False, 0, 0x7FFFFFFF),
    "notes": (str, False, 1, 1024),
}


def _bad(text, code="bad-manifest"):
    return ManifestError(text, code)


def _hex(text, length):
    if type(text) is not str or len(text) != length:
        return False
    for c in text:  # noqa: SIM110 (a generator would be one more code object to load)
        if c not in "0123456789abcdef":
            return False
    return True


def epoch_seconds(stamp):
    """'YYYY-MM-DDTHH:MM:SSZ' (a real UTC date and time, 1970-9999, no leap
    second) -> seconds since 1970; ValueError if not.  The host's
    release.epoch_seconds applies the same rule."""
    if len(stamp) != 20 or stamp[4] != "-" or stamp[7] != "-" or stamp[10] != "T" \
            or stamp[13] != ":" or stamp[16] != ":" or stamp[19] != "Z" \
            or not (stamp[0:4] + stamp[5:7] + stamp[8:10] + stamp[11:13] + stamp[14:16]
                    + stamp[17:19]).isdigit():
        raise ValueError(stamp)
    y, mo, d = int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])
    h, mi, s = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
    leap = mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    days = b"\x1f\x1c\x1f\x1e\x1f\x1e\x1f\x1f\x1e\x1f\x1e\x1f"  # per month
    if not (y >= 1970 and 1 <= mo <= 12 and 1 <= d <= days[mo - 1] + leap and h < 24
            and mi < 60 and s < 60):
        raise ValueError(stamp)
    # days from civil (Howard Hinnant), valid for the proleptic Gregorian calendar
    y -= mo <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return (era * 146097 + doe - 719468) * 86400 + h * 3600 + mi * 60 + s


def parse(raw, key_id):
    """The fields (a dict) of authenticated bytes, every field checked;
    key_id is the id of the key the signature verified with."""
    try:  # its strict syntax was checked before (mpota.syntax)
        f = json.loads(raw)
    except Exception as e:  # ValueError, MemoryError, UnicodeError: all mean "not JSON"
        raise _bad("not strict JSON: %s" % e)
    for name, (kind, required, low, high) in _FIELDS.items():
        v = f.get(name)
        if v is None:
            if required:
                raise _bad("no field " + name)
            continue
        if type(v) is not kind:
            raise _bad("%s is %s, not %s" % (name, type(v).__name__, kind.__name__))
        if kind is not dict:
            n = len(v) if kind is str else v
            if not low <= n <= high:
                raise _bad("%s%s %d not in %d..%d"
                           % ("len " if kind is str else "", name, n, low, high))
    if f["format"] != _FORMAT:
        raise _bad("format %d unsupported" % f["format"])
    for name in ("sha256", "payload_sha256"):
        if not _hex(f[name], 64):
            raise _bad(name + " not 64 lowercase hex")
    for name in ("created", "expires"):
        if f.get(name) is not None:
            try:
                epoch_seconds(f[name])
            except ValueError:
                raise _bad("bad date %s %r" % (name, f[name]))
    if f["key_id"] != key_id:
        raise _bad("names key %s, signed by %s" % (f["key_id"], key_id))
    enc = f.get("encryption")
    if enc is None:
        if f["payload_size"] != f["size"] or f["payload_sha256"] != f["sha256"]:
            raise _bad("plain payload is not the image")
        return f
    if enc.get("alg") != "aes-256-cbc" or enc.get("kdf") != "ecies-p256-hkdf-sha256-aeskw":
        raise _bad("encryption %r %r unsupported" % (enc.get("alg"), enc.get("kdf")))
    if not _hex(enc.get("iv"), 32):
        raise _bad("bad iv")
    rs = enc.get("recipients")
    if type(rs) is not list or not 0 < len(rs) <= 16:
        raise _bad("recipients: 1-16 needed")
    for r in rs:
        if type(r) is not dict or not (_hex(r.get("key_id"), 16) and _hex(r.get("epk"), 130)
                                       and _hex(r.get("wrapped_key"), 80)):
            raise _bad("bad recipient")
    if f["payload_size"] != (f["size"] + 15) // 16 * 16:
        raise _bad("payload_size %d for size %d" % (f["payload_size"], f["size"]))
    return f


def judge(f, facts):
    """Refuse a release this device must not install.  facts: (board, chip_id,
    running version_code, security floor, slot size in bytes, now), now in
    seconds since 1970 UTC or None when the clock is not trusted."""
    board, chip_id, running, floor, slot, now = facts
    if f["board"] != board:
        raise _bad("board %r, this is %r" % (f["board"], board), "wrong-board")
    if f["chip_id"] != chip_id:
        raise _bad("chip_id %d, this is %d" % (f["chip_id"], chip_id), "wrong-chip")
    if f["version_code"] <= running:
        raise _bad("version_code %d, running %d" % (f["version_code"], running), "downgrade")
    low = f.get("min_version_code")
    if low is not None and running < low:
        raise _bad("needs version_code %d, running %d" % (low, running), "downgrade")
    if f["security_counter"] < floor:
        raise _bad("security_counter %d < floor %d" % (f["security_counter"], floor),
                   "security-counter")
    exp = f.get("expires")
    if exp is not None and now is not None and now > epoch_seconds(exp):
        raise _bad("expired " + exp, "expired")
    if f["size"] > slot or f["payload_size"] > slot + 16:
        raise _bad("%d bytes, slot %d" % (max(f["size"], f["payload_size"]), slot), "too-large")
