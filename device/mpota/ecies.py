# Unwrapping an encrypted release's content key (the scheme is documented in
# docs/encryption.md): ECDH on P-256 between this device's key and the
# release's ephemeral key, HKDF-SHA256 to a key-encryption key, then AES key
# unwrap (RFC 3394), whose integrity check catches a wrong key or an altered
# wrapped key.  MicroPython has no hmac module, so HMAC is built here.
#
#   key = content_key(fields["encryption"], nvs)   # DecryptionError with a code
import binascii
import hashlib

import cryptolib

from mpota import p256
from mpota.errors import DecryptionError


def hmac_sha256(key, msg):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def hkdf_sha256(ikm, salt, info):
    """32 bytes of HKDF-SHA256 (one output block is all a key needs)."""
    return hmac_sha256(hmac_sha256(salt, ikm), info + b"\x01")


def ecdh(d, q):
    """x coordinate (32 bytes) of d*Q; q is an affine point already checked
    with p256.decode_point.  None if the result is the point at infinity."""
    point = p256.to_affine(p256.mul(d, q))
    return None if point is None else point[0].to_bytes(32, "big")


def aes_key_unwrap(kek, wrapped):
    """RFC 3394 unwrap; None when the integrity check fails."""
    n = len(wrapped) // 8 - 1
    if len(wrapped) % 8 or n < 2:
        return None
    aes = cryptolib.aes(kek, 1)
    a = bytearray(wrapped[:8])
    r = [bytearray(wrapped[8 * i : 8 * i + 8]) for i in range(1, n + 1)]
    block = bytearray(16)
    out = bytearray(16)
    for j in range(5, -1, -1):
        for i in range(n, 0, -1):
            t = n * j + i
            for k in range(8):
                block[k] = a[k] ^ ((t >> (8 * (7 - k))) & 0xFF)
            block[8:] = r[i - 1]
            aes.decrypt(block, out)
            a[:] = out[:8]
            r[i - 1][:] = out[8:]
    if a != b"\xa6" * 8:
        return None
    return b"".join(bytes(x) for x in r)


def content_key(enc, nvs):
    """The 32-byte content key of a manifest's (checked) encryption header,
    unwrapped with this device's key: the P-256 scalar in NVS mpota/enc_key
    and its public point in mpota/enc_pub (see mpota.enckey)."""
    buf = bytearray(65)
    try:
        d = int.from_bytes(buf[:nvs.get_blob("enc_key", buf)], "big")
        public = bytes(buf[:nvs.get_blob("enc_pub", buf)])
    except OSError:
        raise DecryptionError("no decryption key in NVS", "no-decryption-key")
    kid = binascii.hexlify(hashlib.sha256(public).digest()[:8]).decode()  # keys.key_id
    for r in enc["recipients"]:
        if r["key_id"] == kid:
            break
    else:
        raise DecryptionError("key %s not among %s" % (
            kid, ",".join(r["key_id"] for r in enc["recipients"])), "not-a-recipient")
    epk = binascii.unhexlify(r["epk"])
    q = p256.decode_point(epk)
    shared = None if q is None else ecdh(d, q)
    key = None if shared is None else aes_key_unwrap(
        hkdf_sha256(shared, epk, b"mpota-ecies-p256-hkdf-sha256-aeskw-v1" + public),
        binascii.unhexlify(r["wrapped_key"]))
    if key is None or len(key) != 32:
        raise DecryptionError("key %s does not unwrap" % kid, "key-unwrap")
    return key
