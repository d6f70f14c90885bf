# Release manifests, after their signature is checked (mpota.verify does
# that first): strict JSON syntax, the field table, and whether this device
# may install the release.  No I/O here.  Messages are short and name the
# value seen; the host's `mpota verify` explains at length.
#
#   fields = parse(raw, signer_key_id)   # ManifestError "bad-manifest"
#   judge(fields, facts)                 # ManifestError with its code
import json

from mpota.errors import ManifestError

MAX_MANIFEST = 4096
FORMAT = 1

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
# Containers nested deeper than this are refused (a recipient sits at depth 4).
MAX_DEPTH = 8


def _bad(text, code="bad-manifest"):
    return ManifestError(text, code)


# Strict JSON (RFC 8259) in printable ASCII, checked before json.loads: the
# unix/ESP32 json module accepts missing commas and colons, trailing commas,
# leading zeros, raw control characters and bytes after the object, and the
# host's verify must reach the same verdict as the device on every manifest.
# Faults are ValueError("<what> at <byte offset>").


def _ws(raw, i):
    n = len(raw)
    while i < n and raw[i] in b" \t\n\r":
        i += 1
    return i


def _string(raw, i):
    # raw[i] is '"': the index after the closing quote
    n = len(raw)
    i += 1
    while i < n:
        c = raw[i]
        if c == 34:
            return i + 1
        if c == 92:
            i += 1
            if i < n and raw[i] == 117:  # \uXXXX
                if i + 5 > n:
                    raise ValueError("bad \\u at %d" % i)
                for k in range(i + 1, i + 5):
                    if raw[k] not in b"0123456789abcdefABCDEF":
                        raise ValueError("bad \\u at %d" % i)
                i += 4
            elif i >= n or raw[i] not in b'"\\/bfnrt':
                raise ValueError("bad escape at %d" % i)
        elif c < 32 or c > 126:
            raise ValueError("byte 0x%02x at %d" % (c, i))
        i += 1
    raise ValueError("open string")


def _digits(raw, i):
    n = len(raw)
    while i < n and 48 <= raw[i] <= 57:
        i += 1
    return i


def _number(raw, i):
    start = i
    n = len(raw)
    if i < n and raw[i] == 45:  # -
        i += 1
    if i < n and raw[i] == 48:  # a lone 0: no leading zeros
        i += 1
    elif i < n and 49 <= raw[i] <= 57:
        i = _digits(raw, i)
    else:
        raise ValueError("bad value at %d" % start)
    if i < n and raw[i] == 46:  # .
        i = _digits(raw, i + 1)
        if raw[i - 1] == 46:
            raise ValueError("bad number at %d" % i)
    if i < n and raw[i] in b"eE":
        i += 1
        if i < n and raw[i] in b"+-":
            i += 1
        j = _digits(raw, i)
        if j == i:
            raise ValueError("bad number at %d" % i)
        i = j
    return i


def _key(raw, i, keys):
    # a quoted key and its ':' at raw[i]: (index of the value, the key)
    if i >= len(raw) or raw[i] != 34:
        raise ValueError("expected key at %d" % i)
    j = _string(raw, i)
    name = json.loads(raw[i:j]) if raw.find(b"\\", i, j) >= 0 else raw[i + 1 : j - 1].decode()
    if name in keys:
        raise ValueError("duplicate key %r" % name)
    keys.append(name)
    j = _ws(raw, j)
    if j >= len(raw) or raw[j] != 58:
        raise ValueError("expected ':' at %d" % j)
    return _ws(raw, j + 1), name


def syntax(raw):
    """Check that raw is one strict JSON object (printable ASCII, no duplicate
    keys, nested at most MAX_DEPTH deep); ValueError naming the first fault.
    Returns the top-level key_id's value, or None."""
    n = len(raw)
    stack = []  # per open container: its keys (an object) or None (an array)
    key_id = None
    top_key_id = False
    i = _ws(raw, 0)
    if i >= n or raw[i] != 123:
        raise ValueError("not an object")
    while True:
        c = raw[i] if i < n else -1
        if c == 123 or c == 91:  # { [
            if len(stack) >= MAX_DEPTH:
                raise ValueError("nested > %d at %d" % (MAX_DEPTH, i))
            j = _ws(raw, i + 1)
            if j < n and raw[j] == c + 2:  # } ]: empty
                i = j + 1
            else:
                stack.append([] if c == 123 else None)
                i = j
                if c == 123:
                    i, name = _key(raw, i, stack[-1])
                    top_key_id = len(stack) == 1 and name == "key_id"
                continue
        elif c == 34:
            j = _string(raw, i)
            if top_key_id:
                key_id = raw[i + 1 : j - 1].decode()
            i = j
        elif c in b"tfn":
            for word in (b"true", b"false", b"null"):
                if raw.startswith(word, i):
                    i += len(word)
                    break
            else:
                raise ValueError("bad value at %d" % i)
        elif c < 0:
            raise ValueError("cut short")
        else:
            i = _number(raw, i)
        top_key_id = False
        while True:  # after a value: ',' or the end of its container
            i = _ws(raw, i)
            if not stack:
                if i != n:
                    raise ValueError("%d bytes after '}'" % (n - i))
                return key_id
            if i >= n:
                raise ValueError("cut short")
            c = raw[i]
            if c == 44:
                i = _ws(raw, i + 1)
                if stack[-1] is not None:
                    i, name = _key(raw, i, stack[-1])
                    top_key_id = len(stack) == 1 and name == "key_id"
                break
            if c == (93 if stack[-1] is None else 125):
                stack.pop()
                i += 1
                continue
            raise ValueError("expected ',' at %d" % i)


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
    try:
        syntax(raw)
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
    if f["format"] != FORMAT:
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
