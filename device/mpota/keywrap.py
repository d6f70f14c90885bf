# Key derivation and key unwrap for mpota.ecies: HMAC-SHA256 (MicroPython
# has no hmac module), HKDF-SHA256 (RFC 5869, one output block) and AES key
# unwrap (RFC 3394), whose integrity check catches a wrong key or an altered
# wrapped key.  Loaded after the ECDH, when mpota.p256 has left the heap.
import hashlib

import cryptolib


def hmac_sha256(key, msg):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    pad = bytearray(64)  # no generator objects: each would be one more code object
    pad[:len(key)] = key
    for i in range(64):
        pad[i] ^= 0x36
    inner = hashlib.sha256(pad)
    inner.update(msg)
    for i in range(64):
        pad[i] ^= 0x6A  # 0x36 ^ 0x5C
    outer = hashlib.sha256(pad)
    outer.update(inner.digest())
    return outer.digest()


def hkdf_sha256(ikm, salt, info):
    """32 bytes of HKDF-SHA256 (one output block is all a key needs)."""
    return hmac_sha256(hmac_sha256(salt, ikm), info + b"\x01")


def aes_key_unwrap(kek, wrapped):
    """RFC 3394 unwrap; None when the integrity check fails."""
    n = len(wrapped) // 8 - 1
    if len(wrapped) % 8 or n < 2:
        return None
    aes = cryptolib.aes(kek, 1)
    r = bytearray(wrapped)  # A, then R[1..n], 8 bytes each
    block = bytearray(16)
    for j in range(5, -1, -1):
        for i in range(n, 0, -1):
            t = n * j + i
            for k in range(8):
                block[k] = r[k] ^ ((t >> (8 * (7 - k))) & 0xFF)
            block[8:] = r[8 * i : 8 * i + 8]
            aes.decrypt(block, block)
            r[:8] = block[:8]
            r[8 * i : 8 * i + 8] = block[8:]
    if r[:8] != b"\xa6" * 8:
        return None
    return bytes(r[8:])
