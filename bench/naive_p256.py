# The baseline the P-256 verifier is measured against (MicroPython): the
# textbook way, two separate left-to-right double-and-add scalar
# multiplications in Jacobian coordinates, then an affine conversion.  It
# uses mpota.p256's point formulas, so the comparison measures the
# algorithm (interleaving, wNAF, tables, no final inversion) only.
from mpota import p256
from mpota.p256 import INFINITY, P, double


def _add_affine(pt, x2, y2):
    """Jacobian pt + affine (x2, y2) (the agent has no use for it: it lives here)."""
    x1, y1, z1 = pt
    if not z1:
        return (x2, y2, 1)
    zz = z1 * z1 % P
    h = (x2 * zz - x1) % P
    r = (y2 * zz * z1 - y1) % P
    if not h:
        return double(pt) if not r else INFINITY
    hh = h * h % P
    hhh = h * hh % P
    v = x1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return (x3, (r * (v - x3) - y1 * hhh) % P, z1 * h % P)


def _mul(k, x, y):
    acc = p256.INFINITY
    for i in range(255, -1, -1):
        acc = p256.double(acc)
        if (k >> i) & 1:
            acc = _add_affine(acc, x, y)
    return acc


def verify(q, digest, sig):
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < p256.N and 0 < s < p256.N):
        return False
    e = int.from_bytes(digest, "big") % p256.N
    w = p256.inverse(s, p256.N)
    point = p256.add(_mul(e * w % p256.N, p256.GX, p256.GY), _mul(r * w % p256.N, q[0], q[1]))
    affine = p256.to_affine(point)
    return affine is not None and affine[0] % p256.N == r
