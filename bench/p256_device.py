# Run on the unix port by bench/__main__.py:  micropython p256_device.py CASES ROUNDS
# CASES: a file of "pubkey_hex digest_hex sig_hex" lines.  Prints one JSON line.
import binascii
import json
import sys
import time

import mpota
import naive_p256
from mpota import ecies, p256


def load(path):
    cases = []
    with open(path) as f:
        for line in f:
            pub, digest, sig = line.split()
            cases.append((p256.decode_point(binascii.unhexlify(pub)),
                          binascii.unhexlify(digest), binascii.unhexlify(sig)))
    return cases


def timed(fn, cases, rounds):
    start = time.ticks_us()
    for _ in range(rounds):
        for q, digest, sig in cases:
            if not fn(q, digest, sig):
                raise SystemExit("verification failed in the benchmark")
    return time.ticks_diff(time.ticks_us(), start) / (rounds * len(cases))


def verify(q, digest, sig):
    return mpota.drive(p256.verify(q, digest, sig))


def slices(cases, rounds):
    # each step of a verify timed on its own (ticks_us around each next()):
    # (slices per verify, longest slice us, median slice us)
    per, longest, spans = 0, 0, []
    for _ in range(rounds):
        for q, digest, sig in cases:
            g = p256.verify(q, digest, sig)
            while True:
                t = time.ticks_us()
                try:
                    next(g)
                except StopIteration:
                    break
                finally:
                    span = time.ticks_diff(time.ticks_us(), t)
                    spans.append(span)
                    longest = max(longest, span)
                per += 1
    spans.sort()
    return per / (rounds * len(cases)) + 1, longest, spans[len(spans) // 2]


cases = load(sys.argv[1])
rounds = int(sys.argv[2])
p256.g_table()  # built once per boot; not part of a verify
before = p256.inversions
fast = timed(verify, cases, rounds)
inv_fast = (p256.inversions - before) / (rounds * len(cases))
before = p256.inversions
naive = timed(naive_p256.verify, cases, rounds)
inv_naive = (p256.inversions - before) / (rounds * len(cases))
d = int.from_bytes(b"\x5a" * 32, "big")
start = time.ticks_us()
for _ in range(rounds):
    for q, _, _ in cases:
        mpota.drive(ecies.ecdh(d, q))
ecdh = time.ticks_diff(time.ticks_us(), start) / (rounds * len(cases))
n, longest, median = slices(cases, rounds)
print(json.dumps({"fast_us": fast, "naive_us": naive, "fast_inversions": inv_fast,
                  "naive_inversions": inv_naive, "ecdh_us": ecdh, "slices": n,
                  "slice_max_us": longest, "slice_median_us": median}))
