# Trusted signing keys.  More than one can be trusted at a time, so a fleet
# can move to a new signing key: install the new key, sign with it, then
# remove the old one.  A key is known by its id: the first 8 bytes of the
# SHA-256 of its uncompressed point, in hex (the same id the host prints).
import binascii
import hashlib

from mpota import p256
from mpota.errors import TrustedKeyError

# DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point
_SPKI_P256 = binascii.unhexlify("3059301306072a8648ce3d020106082a8648ce3d030107034200")


def key_id(point_bytes):
    return binascii.hexlify(hashlib.sha256(point_bytes).digest()[:8]).decode()


def _der_from_pem(text):
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if not lines or lines[0] != "-----BEGIN PUBLIC KEY-----" \
            or lines[-1] != "-----END PUBLIC KEY-----":
        raise TrustedKeyError("a PEM public key must start with -----BEGIN PUBLIC KEY-----")
    try:
        return binascii.a2b_base64("".join(lines[1:-1]))
    except ValueError:
        raise TrustedKeyError("the PEM public key is not valid base64")


def parse_public_key(key):
    """The 65-byte uncompressed point of a P-256 public key given as PEM text,
    SubjectPublicKeyInfo DER, a raw SEC1 point, or the hex of one."""
    if isinstance(key, str):
        if "BEGIN" in key:
            key = _der_from_pem(key)
        else:
            try:
                key = binascii.unhexlify(key.strip())
            except ValueError:
                raise TrustedKeyError("public key is neither PEM nor hex")
    key = bytes(key)
    if key[:1] == b"\x30":  # DER SubjectPublicKeyInfo
        if len(key) != len(_SPKI_P256) + 65 or key[: len(_SPKI_P256)] != _SPKI_P256:
            raise TrustedKeyError("public key is not an ECDSA P-256 key (wrong algorithm or curve)")
        key = key[len(_SPKI_P256):]
    point = p256.decode_point(key)
    if point is None:
        raise TrustedKeyError("public key is not a point on P-256 (%d bytes)" % len(key))
    return b"\x04" + point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big")


class TrustedKeys:
    def __init__(self, keys=()):
        self._keys = {}
        for k in keys:
            self.add(k)

    def add(self, key):
        """Trust a key (any form parse_public_key takes); returns its id."""
        raw = parse_public_key(key)
        kid = key_id(raw)
        self._keys[kid] = p256.decode_point(raw)
        return kid

    def remove(self, kid):
        if kid not in self._keys:
            raise TrustedKeyError("key %s is not trusted; trusted: %s"
                                  % (kid, ", ".join(self.ids())))
        del self._keys[kid]

    def get(self, kid):
        return self._keys.get(kid)

    def ids(self):
        return sorted(self._keys)

    def __len__(self):
        return len(self._keys)
