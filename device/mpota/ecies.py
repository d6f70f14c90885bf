# Unwrapping an encrypted release's content key (the scheme is documented in
# docs/encryption.md): ECDH on P-256 between this device's key and the
# release's ephemeral key, HKDF-SHA256 to a key-encryption key, then AES key
# unwrap (RFC 3394), whose integrity check catches a wrong key or an altered
# wrapped key.  MicroPython has no hmac module, so HMAC is built here.
import binascii
import hashlib

import cryptolib

from mpota import p256
from mpota.errors import KeyUnwrapError, NotARecipient

INFO = b"mpota-ecies-p256-hkdf-sha256-aeskw-v1"
_A6 = b"\xa6" * 8


def hmac_sha256(key, msg):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def hkdf_sha256(ikm, salt, info, length=32):
    prk = hmac_sha256(salt, ikm)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac_sha256(prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


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
    if bytes(a) != _A6:
        return None
    return b"".join(bytes(x) for x in r)


def unwrap(d, public, recipient):
    """The 32-byte content key from one recipient entry of a manifest."""
    epk = binascii.unhexlify(recipient["epk"])
    q = p256.decode_point(epk)
    if q is None:
        raise KeyUnwrapError("the release's ephemeral key is not a P-256 point: "
                             "the encryption header was altered")
    shared = ecdh(d, q)
    if shared is None:
        raise KeyUnwrapError("ECDH gave the point at infinity: invalid ephemeral key")
    kek = hkdf_sha256(shared, epk, INFO + public)
    key = aes_key_unwrap(kek, binascii.unhexlify(recipient["wrapped_key"]))
    if key is None or len(key) != 32:
        raise KeyUnwrapError("the content key does not unwrap with this device's key %s: "
                             "the wrapped key was altered or made for another key"
                             % recipient["key_id"])
    return key


def content_key(enc, nvs):
    """The content key of a manifest's encryption header for this device."""
    from mpota import enckey

    d, public, kid = enckey.load(nvs)
    for recipient in enc["recipients"]:
        if recipient["key_id"] == kid:
            return unwrap(d, public, recipient)
    raise NotARecipient("the release is encrypted for key(s) %s; this device's key is %s"
                        % (", ".join(r["key_id"] for r in enc["recipients"]), kid))
