# Run on the unix port by bench/__main__.py:  micropython p256_device.py CASES ROUNDS
# CASES: a file of "pubkey_hex digest_hex sig_hex" lines.  Prints one JSON line.
import binascii
import json
import sys
import time

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


cases = load(sys.argv[1])
rounds = int(sys.argv[2])
p256.g_table()  # built once per boot; not part of a verify
before = p256.inversions
fast = timed(p256.verify, cases, rounds)
inv_fast = (p256.inversions - before) / (rounds * len(cases))
before = p256.inversions
naive = timed(naive_p256.verify, cases, rounds)
inv_naive = (p256.inversions - before) / (rounds * len(cases))
d = int.from_bytes(b"\x5a" * 32, "big")
start = time.ticks_us()
for _ in range(rounds):
    for q, _, _ in cases:
        ecies.ecdh(d, q)
ecdh = time.ticks_diff(time.ticks_us(), start) / (rounds * len(cases))
print(json.dumps({"fast_us": fast, "naive_us": naive, "fast_inversions": inv_fast,
                  "naive_inversions": inv_naive, "ecdh_us": ecdh}))
