# NIST P-256 in pure MicroPython: point arithmetic in Jacobian coordinates
# (a = -3 doubling), ECDSA verification with interleaved wNAF scalar
# multiplication (Jacobian tables of odd multiples of G and of Q, built per
# verify and dropped after it), and the scalar multiplication ECDH needs.
#
# verify, mul and mul_add are step generators (see mpota.drive): the
# multiplication loop yields None every _SLICE digits, so an asyncio
# application runs between slices; drive them with `yield from` or
# mpota.drive(p256.verify(q, digest, sig)).
#
# Big integers are MicroPython's C mpz, so each field multiply costs about a
# microsecond; modular inversions cost hundreds of times more, so a verify
# does exactly one (s^-1 mod n) and compares x without leaving Jacobian
# coordinates.  `inversions` counts them for the benchmark.
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
G_WINDOW = 4  # wNAF width for the fixed base: 4 points per verify
Q_WINDOW = 3  # wNAF width for the public key: 2 points per verify
# digits of the shared doubling chain per step: 8 makes 33 slices of a
# 256-bit multiply (~0.16 ms each on the unix port, about as long as the
# one inversion, a single C call no slicing can split; 16 makes them longer)
_SLICE = const(8)

INFINITY = (1, 1, 0)
inversions = 0


def inverse(x, m):
    global inversions
    inversions += 1
    return pow(x, m - 2, m)


def on_curve(x, y):
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x - 3 * x + B)) % P == 0


def decode_point(raw):
    """A public point from SEC1 bytes (uncompressed 04||X||Y or compressed
    02/03||X); None when the bytes are not a point on P-256."""
    if len(raw) == 65 and raw[0] == 4:
        x = int.from_bytes(raw[1:33], "big")
        y = int.from_bytes(raw[33:], "big")
    elif len(raw) == 33 and raw[0] in (2, 3):
        x = int.from_bytes(raw[1:], "big")
        if x >= P:
            return None
        y = pow((x * x * x - 3 * x + B) % P, (P + 1) // 4, P)  # P = 3 mod 4
        if y & 1 != raw[0] & 1:
            y = P - y
    else:
        return None
    if not on_curve(x, y):
        return None
    return (x, y)


def double(pt):
    x, y, z = pt
    if not z or not y:
        return INFINITY
    zz = z * z % P
    m = 3 * (x - zz) * (x + zz) % P
    yy = y * y % P
    s = 4 * x * yy % P
    x3 = (m * m - 2 * s) % P
    return (x3, (m * (s - x3) - 8 * yy * yy) % P, 2 * y * z % P)


def add(p1, p2):
    """Jacobian p1 + Jacobian p2."""
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if not z1:
        return p2
    if not z2:
        return p1
    z1z1 = z1 * z1 % P
    z2z2 = z2 * z2 % P
    u1 = x1 * z2z2 % P
    s1 = y1 * z2 * z2z2 % P
    h = (x2 * z1z1 - u1) % P
    r = (y2 * z1 * z1z1 - s1) % P
    if not h:
        return double(p1) if not r else INFINITY
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return (x3, (r * (v - x3) - s1 * hhh) % P, z1 * z2 * h % P)


def to_affine(pt):
    x, y, z = pt
    if not z:
        return None
    zi = inverse(z, P)
    zi2 = zi * zi % P
    return (x * zi2 % P, y * zi2 * zi % P)


def wnaf(k, w):
    """Width-w NAF digits of k, least significant first, each stored + 128 in
    a bytearray (a list of 257 ints would cost 2 KB of heap)."""
    if not k:
        return b""
    digits = bytearray(258)  # k < 2^256: at most 257 digits
    full = 1 << w
    half = full >> 1
    i = 0
    while k:
        d = 0
        if k & 1:
            d = k & (full - 1)
            if d >= half:
                d -= full
            k -= d
        digits[i] = d + 128
        k >>= 1
        i += 1
    return memoryview(digits)[:i]


def _odd_multiples(pt, count):
    # pt, 3pt, 5pt, ... in Jacobian coordinates
    twice = double(pt)
    out = [pt]
    for _ in range(count - 1):
        out.append(add(out[-1], twice))
    return out


def g_table():
    """Odd multiples of G (Jacobian), built per verify: no inversion, and no
    table outlives the verify (the agent drops this module after it)."""
    return _odd_multiples((GX, GY, 1), 1 << (G_WINDOW - 2))


def mul_add(u1, u2, q):
    """Steps: u1*G + u2*Q (Q affine) as a Jacobian point: one shared doubling
    chain, a pause every _SLICE digits."""
    tables = ((wnaf(u1, G_WINDOW), g_table() if u1 else None),
              (wnaf(u2, Q_WINDOW), _odd_multiples((q[0], q[1], 1), 1 << (Q_WINDOW - 2))))
    acc = INFINITY
    for i in range(max(len(tables[0][0]), len(tables[1][0])) - 1, -1, -1):
        acc = double(acc)
        for digits, table in tables:
            d = digits[i] - 128 if i < len(digits) else 0
            if d > 0:
                acc = add(acc, table[d >> 1])
            elif d < 0:
                x, y, z = table[(-d) >> 1]
                acc = add(acc, (x, P - y, z))
        if not i % _SLICE:
            yield
    return acc


def mul(k, q):
    """Steps: k*Q for an affine point Q (ECDH); Jacobian result."""
    return mul_add(0, k, q)


def verify(q, digest, sig):
    """Steps: ECDSA P-256 verification over a 32-byte SHA-256 digest.

    q: public point (x, y) already checked with decode_point; sig: raw r||s
    (64 bytes, IEEE P1363).  Returns True or False; never raises for a bad
    signature.  Pauses after the inversion and in the multiplication."""
    if len(sig) != 64 or len(digest) != 32:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    e = int.from_bytes(digest, "big") % N
    w = inverse(s, N)
    yield
    x, _, z = yield from mul_add(e * w % N, r * w % N, q)
    if not z:
        return False
    # x_affine = x / z^2; accept when x_affine mod n == r, without inverting z
    zz = z * z % P
    if x == r * zz % P:
        return True
    return r + N < P and x == (r + N) * zz % P
