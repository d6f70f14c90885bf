"""P-256 on the unix port: every Wycheproof ECDSA P1363 vector, and the heap budget
(tables built per verify, none kept in the module)."""

from __future__ import annotations

import json

from helpers import run_unix, unix_results, wycheproof

ECDSA = wycheproof("ecdsa_secp256r1_sha256_p1363_test.json")


def test_every_wycheproof_ecdsa_vector_agrees() -> None:
    (summary,) = unix_results(f"""
import hashlib, binascii
from mpota import p256
with open({str(ECDSA)!r}) as f:
    data = json.load(f)
checked = 0
wrong = []
for group in data["testGroups"]:
    q = p256.decode_point(binascii.unhexlify(group["publicKey"]["uncompressed"]))
    for t in group["tests"]:
        digest = hashlib.sha256(binascii.unhexlify(t["msg"])).digest()
        try:
            ok = q is not None and p256.verify(q, digest, binascii.unhexlify(t["sig"]))
        except Exception as e:
            ok = "raised %r" % e
        if ok is not (t["result"] == "valid"):
            wrong.append([t["tcId"], t["comment"], str(ok)])
        checked += 1
result({{"checked": checked, "wrong": wrong}})
""")
    total = json.loads(ECDSA.read_text())["numberOfTests"]
    assert summary == {"checked": total, "wrong": []}


def test_verify_costs_one_inversion_and_fits_32k() -> None:
    vectors = json.loads(ECDSA.read_text())
    group = vectors["testGroups"][0]
    good = next(t for t in group["tests"] if t["result"] == "valid")
    code = f"""
import hashlib, binascii, gc
from mpota import p256
q = p256.decode_point(binascii.unhexlify({group["publicKey"]["uncompressed"]!r}))
before = p256.inversions
ok = p256.verify(q, hashlib.sha256(binascii.unhexlify({good["msg"]!r})).digest(),
                 binascii.unhexlify({good["sig"]!r}))
print("RESULT", ok, p256.inversions - before, [n for n in dir(p256) if "table" in n.lower()
                                                and not callable(getattr(p256, n))])
"""
    rc, out = run_unix(code, heapsize="32K")
    assert rc == 0, out
    assert "RESULT True 1 []" in out
