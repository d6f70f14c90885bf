"""ECDH (every Wycheproof vector), HKDF, RFC 3394 unwrap and the content-key
unwrap on the unix port, checked against CPython's cryptography."""

from __future__ import annotations

import hashlib
import hmac
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from helpers import unix_results, wycheproof

ECDH = wycheproof("ecdh_secp256r1_ecpoint_test.json")


def test_every_wycheproof_ecdh_vector_agrees() -> None:
    (summary,) = unix_results(f"""
import binascii
from mpota import p256, ecies
with open({str(ECDH)!r}) as f:
    data = json.load(f)
wrong = []
checked = 0
for group in data["testGroups"]:
    for t in group["tests"]:
        try:
            q = p256.decode_point(binascii.unhexlify(t["public"]))
            d = int.from_bytes(binascii.unhexlify(t["private"]), "big")
            shared = None if q is None else ecies.ecdh(d, q)
            got = None if shared is None else binascii.hexlify(shared).decode()
        except Exception as e:
            got = "raised %r" % e
        if t["result"] == "valid":
            ok = got == t["shared"]
        elif t["result"] == "invalid":
            ok = got is None
        else:
            ok = got is None or got == t["shared"]
        if not ok:
            wrong.append([t["tcId"], t["comment"], t["result"], str(got)])
        checked += 1
result({{"checked": checked, "wrong": wrong}})
""")
    assert summary == {"checked": json.loads(ECDH.read_text())["numberOfTests"], "wrong": []}


def test_hmac_hkdf_and_key_unwrap_match_cryptography() -> None:
    key, msg = bytes(range(70)), b"mpota" * 30
    kek, content = bytes(range(32)), bytes(range(100, 132))
    hkdf = HKDF(hashes.SHA256(), 32, salt=b"salt", info=b"info").derive(b"input key")
    wrapped = aes_key_wrap(kek, content)
    out = unix_results(f"""
import binascii
from mpota import ecies
h = lambda b: binascii.hexlify(b).decode()
result(h(ecies.hmac_sha256({key!r}, {msg!r})))
result(h(ecies.hkdf_sha256(b"input key", b"salt", b"info")))
result(h(ecies.aes_key_unwrap({kek!r}, {wrapped!r})))
bad = bytearray({wrapped!r}); bad[20] ^= 1
result(ecies.aes_key_unwrap({kek!r}, bytes(bad)))
result(ecies.aes_key_unwrap(bytes(32), {wrapped!r}))
""")
    assert out == [hmac.new(key, msg, hashlib.sha256).hexdigest(), hkdf.hex(), content.hex(),
                   None, None]


def test_device_generated_key_never_leaves_the_board(booted) -> None:
    import shutil

    from helpers import PRELUDE, results, run_device
    from mpota_host.sim import runner

    shutil.copytree(runner.compiled_agent() / "mpota", booted.fs / "lib" / "mpota")
    out = results(run_device(booted, PRELUDE + """
import binascii, esp32
from mpota import enckey, keys
nvs = esp32.NVS("mpota")
public = enckey.generate(nvs)
d, pub, kid = enckey.load(nvs)
result([binascii.hexlify(public).decode(), kid == keys.key_id(public), pub == public])
"""))
    (public_hex, id_ok, same), = out
    assert id_ok and same and public_hex.startswith("04") and len(public_hex) == 130
    nvs = json.loads((booted.sim_dir / "nvs.json").read_text())["mpota"]
    assert set(nvs) == {"enc_key", "enc_pub"}  # the private half stays in NVS
