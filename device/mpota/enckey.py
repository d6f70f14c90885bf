# This device's decryption key: a P-256 private scalar in NVS (mpota/enc_key)
# with its public point (mpota/enc_pub).  It is installed by provisioning
# (a fleet key) or generated here from os.urandom (a device-unique key, of
# which only the public half ever leaves the board).  The private key is
# never printed, reported or put in an error message.  mpota.ecies reads it
# when a release is decrypted.
import os

import mpota
from mpota import keys, p256


def _public_bytes(d):
    # p256.mul_add is steps (it pauses for the asyncio agent): driven here
    return keys.point_bytes(p256.to_affine(mpota.drive(p256.mul_add(d, 0, (p256.GX, p256.GY)))))


def install(nvs, private):
    """Store a 32-byte private scalar; returns the public point's key id."""
    d = int.from_bytes(private, "big")
    if len(private) != 32 or not 0 < d < p256.N:
        raise ValueError("a P-256 private key is a 32-byte scalar in 1..n-1")
    public = _public_bytes(d)
    nvs.set_blob("enc_key", private)
    nvs.set_blob("enc_pub", public)
    nvs.commit()
    return keys.key_id(public)


def generate(nvs):
    """Make a device-unique key from os.urandom; returns its public point."""
    while True:
        private = os.urandom(32)
        d = int.from_bytes(private, "big")
        if 0 < d < p256.N:
            break
    install(nvs, private)
    return _public_bytes(d)
