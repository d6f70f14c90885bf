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

# name: (type, required, limit)  limit = max length for str, max value for int
_FIELDS = {
    "format": (int, True, 255),
    "board": (str, True, 32),
    "chip_id": (int, True, 0xFFFF),
    "version": (str, True, 31),
    "version_code": (int, True, 0x7FFFFFFF),
    "security_counter": (int, True, 0x7FFFFFFF),
    "size": (int, True, 0x7FFFFFFF),
    "sha256": (str, True, 64),
    "payload_size": (int, True, 0x7FFFFFFF),
    "payload_sha256": (str, True, 64),
    "created": (str, True, 20),
    "expires": (str, False, 20),
    "key_id": (str, True, 16),
    "encryption": (dict, False, 0),
    "min_version_code": (int, False, 0x7FFFFFFF),
    "notes": (str, False, 1024),
}


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


def _peek_key_id(raw):
    # Only to order the keys tried and to word the error: never trusted.
    start = raw.find(b'"key_id"')
    if start < 0:
        return None
    q1 = raw.find(b'"', raw.find(b":", start) + 1)
    q2 = raw.find(b'"', q1 + 1)
    if q1 < 0 or q2 < 0 or q2 - q1 > 65:
        return None
    try:
        return raw[q1 + 1 : q2].decode()
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


def epoch_seconds(stamp):
    """'YYYY-MM-DDTHH:MM:SSZ' -> seconds since 1970 (UTC); ValueError if not."""
    if len(stamp) != 20 or stamp[4] != "-" or stamp[7] != "-" or stamp[10] != "T" \
            or stamp[13] != ":" or stamp[16] != ":" or stamp[19] != "Z":
        raise ValueError(stamp)
    y, mo, d = int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])
    h, mi, s = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
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
        fields = json.loads(raw)
    except Exception as e:  # ValueError, MemoryError, UnicodeError: all mean "not JSON"
        raise ManifestFormatError("manifest is not valid JSON (%s): the signer produced garbage"
                                  % (e.__class__.__name__,))
    if type(fields) is not dict:
        raise ManifestFormatError("manifest must be a JSON object, not %s" % type(fields).__name__)
    for name, (kind, required, limit) in _FIELDS.items():
        value = fields.get(name)
        if value is None:
            if required:
                raise ManifestFormatError("manifest lacks the required field %r" % name)
            continue
        if type(value) is not kind:
            raise ManifestFormatError("field %r must be %s, not %s"
                                      % (name, kind.__name__, type(value).__name__))
        if kind is str and not 0 < len(value) <= limit:
            raise ManifestFormatError("field %r must be 1-%d characters, not %d"
                                      % (name, limit, len(value)))
        if kind is int and not 0 <= value <= limit:
            raise ManifestFormatError("field %r = %d is outside 0..%d" % (name, value, limit))
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
