# Release manifests: authenticate the exact bytes received, then parse, then
# decide whether this device may install the release.  No I/O here: the
# caller passes the bytes, the keys and the device's facts.
#
#   m = check(raw, sig, keys, facts)   # raises a ManifestError subclass
import hashlib
import json

from mpota import p256
from mpota.errors import (
    BoardMismatch,
    ChipMismatch,
    ExpiredError,
    ManifestFormatError,
    ManifestTooLarge,
    RollbackError,
    SecurityCounterError,
    SignatureError,
    SlotTooSmall,
    UnknownKeyError,
)

MAX_MANIFEST = 4096
FORMAT = 1
_HEX = "0123456789abcdef"

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


class Facts:
    """What the device knows about itself when it judges a release."""

    def __init__(self, board, chip_id, version_code, security_floor, slot_size, now=None):
        self.board = board
        self.chip_id = chip_id
        self.version_code = version_code
        self.security_floor = security_floor
        self.slot_size = slot_size
        self.now = now  # seconds since 1970 UTC, or None when the clock is not trusted


class Manifest:
    def __init__(self, fields, key_id):
        self.fields = fields
        self.signed_by = key_id

    def __getattr__(self, name):
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name)


# Strict JSON (RFC 8259) in printable ASCII, checked before json.loads: the
# unix/ESP32 json module accepts missing commas and colons, trailing commas,
# leading zeros, raw control characters and bytes after the object, and the
# host's verify must reach the same verdict as the device on every manifest.
_WS = b" \t\n\r"
_ESCAPES = b'"\\/bfnrt'
_HEXDIGITS = b"0123456789abcdefABCDEF"


def _ws(raw, i):
    n = len(raw)
    while i < n and raw[i] in _WS:
        i += 1
    return i


def _string(raw, i):
    """raw[i] is '"': the index after the closing quote."""
    n = len(raw)
    i += 1
    while i < n:
        c = raw[i]
        if c == 34:
            return i + 1
        if c == 92:
            i += 1
            if i < n and raw[i] == 117:
                if i + 5 > n or not all(raw[k] in _HEXDIGITS for k in range(i + 1, i + 5)):
                    raise ValueError("a \\u escape needs 4 hex digits (byte %d)" % i)
                i += 4
            elif i >= n or raw[i] not in _ESCAPES:
                raise ValueError("invalid escape in a string at byte %d" % i)
        elif c < 32 or c > 126:
            raise ValueError("byte 0x%02x at %d in a string is not printable ASCII "
                             "(escape it as \\uXXXX)" % (c, i))
        i += 1
    raise ValueError("a string is not closed")


def _digits(raw, i):
    n = len(raw)
    while i < n and 48 <= raw[i] <= 57:
        i += 1
    return i


def _number(raw, i):
    start = i
    n = len(raw)
    if i < n and raw[i] == 45:
        i += 1
    if i < n and raw[i] == 48:
        i += 1
    elif i < n and 49 <= raw[i] <= 57:
        i = _digits(raw, i)
    else:
        raise ValueError("unexpected %r at byte %d" % (raw[start:start + 1], start))
    if i < n and raw[i] == 46:
        i = _digits(raw, i + 1)
        if raw[i - 1] == 46:
            raise ValueError("a number needs digits after '.' (byte %d)" % i)
    if i < n and raw[i] in b"eE":
        i += 1
        if i < n and raw[i] in b"+-":
            i += 1
        j = _digits(raw, i)
        if j == i:
            raise ValueError("a number needs digits in its exponent (byte %d)" % i)
        i = j
    return i


def _key(raw, i, keys):
    """A quoted key and its ':' at raw[i]: (index of the value, the key)."""
    if i >= len(raw) or raw[i] != 34:
        raise ValueError("expected a quoted key at byte %d" % i)
    j = _string(raw, i)
    name = json.loads(raw[i:j]) if raw.find(b"\\", i, j) >= 0 else raw[i + 1 : j - 1].decode()
    if name in keys:
        raise ValueError("key %r appears twice in one object" % name)
    keys.append(name)
    j = _ws(raw, j)
    if j >= len(raw) or raw[j] != 58:
        raise ValueError("expected ':' after key %r (byte %d)" % (name, j))
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
        raise ValueError("a manifest must start with '{', not %r" % (raw[i:i + 1],))
    while True:
        c = raw[i] if i < n else -1
        if c == 123 or c == 91:  # { [
            if len(stack) >= MAX_DEPTH:
                raise ValueError("nested deeper than %d (byte %d)" % (MAX_DEPTH, i))
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
                raise ValueError("unexpected %r at byte %d" % (raw[i:i + 1], i))
        elif c < 0:
            raise ValueError("the manifest ends early")
        else:
            i = _number(raw, i)
        top_key_id = False
        while True:  # after a value: ',' or the end of its container
            i = _ws(raw, i)
            if not stack:
                if i != n:
                    raise ValueError("%d bytes after the closing '}' (byte %d)" % (n - i, i))
                return key_id
            if i >= n:
                raise ValueError("the manifest ends early")
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
            raise ValueError("expected ',' or the container's end at byte %d, not %r"
                             % (i, raw[i:i + 1]))


def _peek_key_id(raw):
    # The top-level key_id (a recipient's key_id is not the signer's): only to
    # order the keys tried and to word the error, never trusted.
    try:
        return syntax(raw)
    except Exception:
        return None


def authenticate(raw, sig, keys):
    """Verify sig over the exact bytes raw with a trusted key; returns its id."""
    if len(raw) > MAX_MANIFEST:
        raise ManifestTooLarge("manifest is %d bytes, the limit is %d: refused unread"
                               % (len(raw), MAX_MANIFEST))
    if len(sig) != 64:
        raise SignatureError("signature is %d bytes, expected 64 (raw r||s)" % len(sig))
    if not len(keys):
        raise UnknownKeyError("no trusted signing keys are configured: install one first")
    claimed = _peek_key_id(raw)
    digest = hashlib.sha256(raw).digest()
    order = keys.ids()
    if claimed in order:
        order.remove(claimed)
        order.insert(0, claimed)
    for kid in order:
        if p256.verify(keys.get(kid), digest, sig):
            return kid
    if claimed is not None and keys.get(claimed) is None:
        raise UnknownKeyError("manifest names signing key %s, which this device does not trust "
                              "(trusted: %s)" % (claimed, ", ".join(keys.ids())))
    raise SignatureError("signature does not verify with any trusted key (%s): "
                         "the manifest or its signature was altered" % ", ".join(keys.ids()))


def _is_hex(text, length):
    if len(text) != length:
        return False
    return all(c in _HEX for c in text)


_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def epoch_seconds(stamp):
    """'YYYY-MM-DDTHH:MM:SSZ' (a real UTC date and time, 1970-9999, no leap
    second) -> seconds since 1970; ValueError if not.  The host's
    release.epoch_seconds applies the same rule."""
    if len(stamp) != 20 or stamp[4] != "-" or stamp[7] != "-" or stamp[10] != "T" \
            or stamp[13] != ":" or stamp[16] != ":" or stamp[19] != "Z" \
            or not all(stamp[k] in "0123456789" for k in (0, 1, 2, 3, 5, 6, 8, 9, 11, 12,
                                                           14, 15, 17, 18)):
        raise ValueError(stamp)
    y, mo, d = int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])
    h, mi, s = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
    leap = mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not (y >= 1970 and 1 <= mo <= 12 and 1 <= d <= _DAYS[mo - 1] + leap and h < 24
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
    """Parse authenticated bytes into a Manifest, checking every field."""
    try:
        syntax(raw)
        fields = json.loads(raw)
    except Exception as e:  # ValueError, MemoryError, UnicodeError: all mean "not JSON"
        raise ManifestFormatError("manifest is not strict JSON (%s): the signer produced "
                                  "garbage" % (e,))
    if type(fields) is not dict:
        raise ManifestFormatError("manifest must be a JSON object, not %s" % type(fields).__name__)
    for name, (kind, required, low, high) in _FIELDS.items():
        value = fields.get(name)
        if value is None:
            if required:
                raise ManifestFormatError("manifest lacks the required field %r" % name)
            continue
        if type(value) is not kind:
            raise ManifestFormatError("field %r must be %s, not %s"
                                      % (name, kind.__name__, type(value).__name__))
        if kind is str and not low <= len(value) <= high:
            raise ManifestFormatError("field %r must be %d-%d characters, not %d"
                                      % (name, low, high, len(value)))
        if kind is int and not low <= value <= high:
            raise ManifestFormatError("field %r = %d is outside %d..%d" % (name, value, low, high))
    if fields["format"] != FORMAT:
        raise ManifestFormatError("manifest format %d is not supported (this agent reads %d): "
                                  "update the agent first" % (fields["format"], FORMAT))
    for name in ("sha256", "payload_sha256"):
        if not _is_hex(fields[name], 64):
            raise ManifestFormatError("field %r must be 64 lowercase hex digits" % name)
    for name in ("created", "expires"):
        if fields.get(name) is not None:
            try:
                epoch_seconds(fields[name])
            except ValueError:
                raise ManifestFormatError("field %r = %r is not YYYY-MM-DDTHH:MM:SSZ"
                                          % (name, fields[name]))
    if fields["key_id"] != key_id:
        raise ManifestFormatError("manifest names key %s but was signed by %s"
                                  % (fields["key_id"], key_id))
    if fields.get("encryption") is None:
        if fields["payload_size"] != fields["size"] or \
                fields["payload_sha256"] != fields["sha256"]:
            raise ManifestFormatError("an unencrypted payload must have the image's size and hash")
    else:
        _check_encryption(fields)
    return Manifest(fields, key_id)


def _check_encryption(fields):
    enc = fields["encryption"]
    if enc.get("alg") != "aes-256-cbc" or enc.get("kdf") != "ecies-p256-hkdf-sha256-aeskw":
        raise ManifestFormatError("encryption %r / %r is not supported (this agent reads "
                                  "aes-256-cbc with ecies-p256-hkdf-sha256-aeskw)"
                                  % (enc.get("alg"), enc.get("kdf")))
    if type(enc.get("iv")) is not str or not _is_hex(enc["iv"], 32):
        raise ManifestFormatError("encryption iv must be 32 lowercase hex digits")
    recipients = enc.get("recipients")
    if type(recipients) is not list or not 0 < len(recipients) <= 16:
        raise ManifestFormatError("encryption recipients must be a list of 1-16 entries")
    for r in recipients:
        if type(r) is not dict or not all(
                type(r.get(k)) is str and _is_hex(r[k], n)
                for k, n in (("key_id", 16), ("epk", 130), ("wrapped_key", 80))):
            raise ManifestFormatError("each recipient needs key_id (16 hex), epk (130 hex) "
                                      "and wrapped_key (80 hex)")
    if fields["payload_size"] != (fields["size"] + 15) // 16 * 16:
        raise ManifestFormatError("encrypted payload_size %d is not the image size %d "
                                  "rounded up to 16" % (fields["payload_size"], fields["size"]))


def judge(m, facts):
    """Refuse a release this device must not install."""
    if m.board != facts.board:
        raise BoardMismatch("release is for board %r, this is %r" % (m.board, facts.board))
    if m.chip_id != facts.chip_id:
        raise ChipMismatch("release is for chip id %d, this chip is %d"
                           % (m.chip_id, facts.chip_id))
    if m.version_code <= facts.version_code:
        raise RollbackError("release version_code %d is not newer than the running %d "
                            "(downgrades are refused)" % (m.version_code, facts.version_code))
    minimum = m.fields.get("min_version_code")
    if minimum is not None and facts.version_code < minimum:
        raise RollbackError("release needs version_code %d or later installed first; running %d"
                            % (minimum, facts.version_code))
    if m.security_counter < facts.security_floor:
        raise SecurityCounterError("release security_counter %d is below this device's floor %d"
                                   % (m.security_counter, facts.security_floor))
    expires = m.fields.get("expires")
    if expires is not None and facts.now is not None and facts.now > epoch_seconds(expires):
        raise ExpiredError("release expired at %s: ask for a fresh release" % expires)
    if m.size > facts.slot_size or m.payload_size > facts.slot_size + 16:
        raise SlotTooSmall("image is %d bytes, the update slot holds %d"
                           % (max(m.size, m.payload_size), facts.slot_size))


def check(raw, sig, keys, facts):
    """authenticate + parse + judge: the Manifest, or a ManifestError."""
    kid = authenticate(raw, sig, keys)
    m = parse(raw, kid)
    judge(m, facts)
    return m
