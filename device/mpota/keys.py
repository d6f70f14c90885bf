# Trusted signing keys.  More than one can be trusted at a time, so a fleet
# can move to a new signing key: install the new key, sign with it, then
# remove the old one.  A key is known by its id: the first 8 bytes of the
# SHA-256 of its uncompressed point, in hex (the same id the host prints).
#
#   kid = key_id(point_bytes)
#   q = public_key(pem_text)   # (x, y); ConfigError code "bad-key" if unreadable
import binascii
import hashlib

from mpota.errors import ConfigError


def key_id(point_bytes):
    return binascii.hexlify(hashlib.sha256(point_bytes).digest()[:8]).decode()


def public_key(key):
    """The affine point (x, y) of a P-256 public key given as PEM text,
    SubjectPublicKeyInfo DER, a raw SEC1 point (65 or 33 bytes), or the hex
    of one; ConfigError (code "bad-key") naming what is wrong."""
    from mpota import p256

    try:
        if isinstance(key, str):
            if "BEGIN" in key:
                lines = key.strip().splitlines()
                if lines[0].strip() != "-----BEGIN PUBLIC KEY-----" \
                        or lines[-1].strip() != "-----END PUBLIC KEY-----":
                    raise ValueError("not a PEM public key")
                key = binascii.a2b_base64("".join(lines[1:-1]))
            else:
                key = binascii.unhexlify(key.strip())
    except ValueError as e:  # bad base64 or hex
        raise ConfigError("trusted key: %s" % e, "bad-key")
    key = bytes(key)
    if key[:1] == b"\x30":  # DER SubjectPublicKeyInfo of an ecPublicKey on prime256v1
        if len(key) != 91 or key[:26] != binascii.unhexlify(
                "3059301306072a8648ce3d020106082a8648ce3d030107034200"):
            raise ConfigError("trusted key: not ECDSA P-256", "bad-key")
        key = key[26:]
    q = p256.decode_point(key)
    if q is None:
        raise ConfigError("trusted key: not a P-256 point (%d bytes)" % len(key), "bad-key")
    return q


def point_bytes(q):
    """The 65-byte uncompressed SEC1 encoding of an affine point."""
    return b"\x04" + q[0].to_bytes(32, "big") + q[1].to_bytes(32, "big")
