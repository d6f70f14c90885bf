"""ECDH (every Wycheproof vector), HKDF, RFC 3394 unwrap and the content-key
unwrap on the unix port, checked against CPython's cryptography and the
host's release encryption."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from helpers import unix_results, wycheproof
from mpota_host import encryption, keys

ECDH = wycheproof("ecdh_secp256r1_ecpoint_test.json")


def test_every_wycheproof_ecdh_vector_agrees() -> None:
    (summary,) = unix_results(f"""
import binascii, mpota
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
            secret = None if q is None else mpota.drive(ecies.ecdh(d, q))
            got = None if secret is None else binascii.hexlify(secret).decode()
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
from mpota import keywrap
h = lambda b: binascii.hexlify(b).decode()
result(h(keywrap.hmac_sha256({key!r}, {msg!r})))
result(h(keywrap.hkdf_sha256(b"input key", b"salt", b"info")))
result(h(keywrap.aes_key_unwrap({kek!r}, {wrapped!r})))
bad = bytearray({wrapped!r}); bad[20] ^= 1
result(keywrap.aes_key_unwrap({kek!r}, bytes(bad)))
result(keywrap.aes_key_unwrap(bytes(32), {wrapped!r}))
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
buf = bytearray(65)
pub = bytes(buf[:nvs.get_blob("enc_pub", buf)])
result([binascii.hexlify(public).decode(), keys.key_id(public), pub == public])
"""))
    (public_hex, kid, same), = out
    point = bytes.fromhex(public_hex)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    assert same and kid == keys.key_id(public) and len(point) == 65
    nvs = json.loads((booted.sim_dir / "nvs.json").read_text())["mpota"]
    assert set(nvs) == {"enc_key", "enc_pub"}  # the private half stays in NVS


CONTENT = """
import binascii, mpota
from mpota import ecies, errors
class NVS:
    def __init__(self, blobs):
        self.blobs = blobs
    def get_blob(self, name, buf):
        if name not in self.blobs:
            raise OSError(-0x1102)
        buf[:len(self.blobs[name])] = self.blobs[name]
        return len(self.blobs[name])
try:
    result(binascii.hexlify(mpota.drive(ecies.content_key({enc!r}, NVS({blobs!r})))).decode())
except errors.DecryptionError as e:
    result([e.code, str(e)])
"""


def _device_key() -> tuple[ec.EllipticCurvePrivateKey, dict[str, bytes]]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, {"enc_key": key.private_numbers().private_value.to_bytes(32, "big"),
                 "enc_pub": keys.point_bytes(key.public_key())}


def _content_key(enc: dict[str, Any], blobs: dict[str, bytes]) -> Any:
    (out,) = unix_results(CONTENT.format(enc=enc, blobs=blobs))
    return out


def test_the_content_key_unwraps_for_each_recipient() -> None:
    content = bytes(range(32))
    pairs = [_device_key() for _ in range(3)]
    enc = {"recipients": [encryption.wrap_for(content, k.public_key()) for k, _ in pairs]}
    for _, blobs in pairs:
        assert _content_key(enc, blobs) == content.hex()


def test_content_key_refusals_name_the_failure() -> None:
    key, blobs = _device_key()
    kid = keys.key_id(key.public_key())
    other, _ = _device_key()
    entry = encryption.wrap_for(bytes(32), key.public_key())
    assert _content_key({"recipients": [entry]}, {}) == [
        "no-decryption-key", "no decryption key in NVS"]
    stranger = encryption.wrap_for(bytes(32), other.public_key())
    assert _content_key({"recipients": [stranger]}, blobs) == [
        "not-a-recipient", f"key {kid} not among {stranger['key_id']}"]
    altered = dict(entry, wrapped_key=entry["wrapped_key"][:-2] + "00")
    not_a_point = dict(entry, epk="04" + "11" * 64)
    for bad in (altered, not_a_point):
        assert _content_key({"recipients": [bad]}, blobs) == [
            "key-unwrap", f"key {kid} does not unwrap"]


def test_content_key_fits_28k() -> None:
    # the interpreter, mpota.errors, ecies and p256 and one unwrap
    from helpers import run_unix

    key, blobs = _device_key()
    entry = encryption.wrap_for(bytes(range(32)), key.public_key())
    rc, out = run_unix("import json\n" + CONTENT.replace("result(", "print(").format(
        enc={"recipients": [entry]}, blobs=blobs), heapsize="28K")
    assert rc == 0 and bytes(range(32)).hex() in out, out
