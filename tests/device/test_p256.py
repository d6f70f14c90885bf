"""P-256 on the unix port: every Wycheproof ECDSA P1363 vector, and the heap budget
(tables built per verify, none kept in the module)."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric import ec

from helpers import run_unix, unix_results, wycheproof

ECDSA = wycheproof("ecdsa_secp256r1_sha256_p1363_test.json")


def test_every_wycheproof_ecdsa_vector_agrees() -> None:
    (summary,) = unix_results(f"""
import hashlib, binascii, mpota
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
            ok = q is not None and mpota.drive(p256.verify(q, digest, binascii.unhexlify(t["sig"])))
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
import hashlib, binascii, gc, mpota
from mpota import p256
q = p256.decode_point(binascii.unhexlify({group["publicKey"]["uncompressed"]!r}))
before = p256.inversions
ok = mpota.drive(p256.verify(q, hashlib.sha256(binascii.unhexlify({good["msg"]!r})).digest(),
                             binascii.unhexlify({good["sig"]!r})))
print("RESULT", ok, p256.inversions - before, [n for n in dir(p256) if "table" in n.lower()
                                                and not callable(getattr(p256, n))])
"""
    rc, out = run_unix(code, heapsize="32K")
    assert rc == 0, out
    assert "RESULT True 1 []" in out


def _some_vectors() -> list[tuple[str, str, str, bool]]:
    """(public key, msg, sig, valid): valid ones, invalid ones whose r and s are
    in range (refused by the multiply's result) and invalid ones refused before it."""
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    picked: dict[str, list[tuple[str, str, str, bool]]] = {"valid": [], "late": [], "early": []}
    for group in json.loads(ECDSA.read_text())["testGroups"]:
        pub = group["publicKey"]["uncompressed"]
        for t in group["tests"]:
            sig = bytes.fromhex(t["sig"])
            in_range = len(sig) == 64 and all(
                0 < int.from_bytes(half, "big") < n for half in (sig[:32], sig[32:]))
            kind = "valid" if t["result"] == "valid" else "late" if in_range else "early"
            if t["result"] != "acceptable" and len(picked[kind]) < 4:
                picked[kind].append((pub, t["msg"], t["sig"], t["result"] == "valid"))
    return [v for kind in picked.values() for v in kind]


def test_verify_and_ecdh_pause_and_share_the_interpreter_with_asyncio() -> None:
    # The same generator, driven blocking (counting its pauses) and by the
    # asyncio agent's driver beside a ticking task: the same verdicts, and
    # the ticker runs inside every verify that reaches the multiply.
    vectors = _some_vectors()
    out = unix_results(f"""
import asyncio, binascii, hashlib, mpota
from mpota import aio, ecies, p256
cases = [(p256.decode_point(binascii.unhexlify(pub)),
          hashlib.sha256(binascii.unhexlify(msg)).digest(), binascii.unhexlify(sig), valid)
         for pub, msg, sig, valid in {vectors!r}]
def pauses(g):
    n = 0
    try:
        while True:
            if g.send(None) is not None:
                return "yielded a want", n
            n += 1
    except StopIteration as e:
        return e.value, n
result([pauses(p256.verify(q, d, s)) for q, d, s, _ in cases])
shared, n = pauses(ecies.ecdh(int("5a" * 32, 16), cases[0][0]))
result([binascii.hexlify(shared).decode(), n])
class Agent:  # what aio.drive reads of the agent: the download options, no busy check
    cfg = {{"download": {{"stall_s": 30, "busy_wait_s": 60}}}}
    busy = None
ticks = [0]
async def ticker():
    while True:
        ticks[0] += 1
        await asyncio.sleep_ms(0)
async def main():
    t = asyncio.create_task(ticker())
    await asyncio.sleep_ms(0)
    out = []
    for q, d, s, _ in cases:
        before = ticks[0]
        ok = await aio.drive(p256.verify(q, d, s), Agent())
        out.append([ok, ticks[0] - before])
    t.cancel()
    return out
result(asyncio.run(main()))
result([valid for _, _, _, valid in cases])
""")
    blocking, ecdh, driven, expected = out
    assert len(expected) == 12 and expected.count(True) == 4
    assert [ok for ok, _ in blocking] == expected
    assert [ok for ok, _ in driven] == expected
    for i in range(8):  # the valid and the in-range invalid ones reach the multiply
        assert blocking[i][1] >= 20, (i, blocking[i])  # 256 digits / 8 + the inversion
        assert driven[i][1] >= blocking[i][1], (i, driven[i])  # the ticker ran at each pause
    for i in range(8, 12):
        assert blocking[i][1] == 0  # refused before any work
    x, y = (int(vectors[0][0][2 + 64 * k:66 + 64 * k], 16) for k in (0, 1))
    public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    shared = ec.derive_private_key(int("5a" * 32, 16), ec.SECP256R1()).exchange(ec.ECDH(), public)
    assert ecdh == [shared.hex(), ecdh[1]] and ecdh[1] >= 20
