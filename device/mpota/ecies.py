# Unwrapping an encrypted release's content key (the scheme is documented in
# docs/encryption.md): ECDH on P-256 between this device's key and the
# release's ephemeral key, HKDF-SHA256 to a key-encryption key, then AES key
# unwrap (RFC 3394), whose integrity check catches a wrong key or an altered
# wrapped key.  The ECDH runs first and mpota.p256 is dropped before the
# key derivation and unwrap (mpota.keywrap) load: one of them in the heap at
# a time.
#
#   key = yield from content_key(fields["encryption"], nvs)   # DecryptionError with a code
#
# content_key and ecdh are step generators (see mpota.drive): they pause
# inside the P-256 multiplication.
import binascii
import hashlib

import mpota
from mpota.errors import DecryptionError


def ecdh(d, q):
    """Steps: x coordinate (32 bytes) of d*Q; q is an affine point already
    checked with p256.decode_point.  None if the result is the point at infinity."""
    from mpota import p256

    point = p256.to_affine((yield from p256.mul(d, q)))
    return None if point is None else point[0].to_bytes(32, "big")


def content_key(enc, nvs):
    """Steps: the 32-byte content key of a manifest's (checked) encryption header,
    unwrapped with this device's key: the P-256 scalar in NVS mpota/enc_key
    and its public point in mpota/enc_pub (see mpota.enckey)."""
    buf = bytearray(65)
    try:
        d = int.from_bytes(buf[:nvs.get_blob("enc_key", buf)], "big")
        public = bytes(buf[:nvs.get_blob("enc_pub", buf)])
    except OSError:
        raise DecryptionError("no decryption key in NVS", "no-decryption-key")
    kid = binascii.hexlify(hashlib.sha256(public).digest()[:8]).decode()  # keys.key_id
    ids = []
    for r in enc["recipients"]:
        if r["key_id"] == kid:
            break
        ids.append(r["key_id"])
    else:
        raise DecryptionError("key %s not among %s" % (kid, ",".join(ids)), "not-a-recipient")
    epk = binascii.unhexlify(r["epk"])
    from mpota import p256

    q = p256.decode_point(epk)
    del p256
    shared = None if q is None else (yield from ecdh(d, q))
    del q, d
    mpota.drop("p256")
    key = None
    if shared is not None:
        from mpota import keywrap

        key = keywrap.aes_key_unwrap(
            keywrap.hkdf_sha256(shared, epk, b"mpota-ecies-p256-hkdf-sha256-aeskw-v1" + public),
            binascii.unhexlify(r["wrapped_key"]))
        del keywrap
        mpota.drop("keywrap")
    if key is None or len(key) != 32:
        raise DecryptionError("key %s does not unwrap" % kid, "key-unwrap")
    return key
