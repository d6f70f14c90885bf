"""Release checks on the device (unix port, verify.release) against releases
signed on the host: each refusal is a ManifestError whose code names it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import unix_results
from mpota_host import keys

NOW = 1_790_000_000  # 2026-09-21, a trusted clock
BASE: dict[str, Any] = {
    "format": 1, "board": "esp32-generic-4mb", "chip_id": 0, "version": "2.0.0",
    "version_code": 2, "security_counter": 1, "size": 65536, "sha256": "ab" * 32,
    "payload_size": 65536, "payload_sha256": "ab" * 32, "created": "2026-09-01T00:00:00Z",
    "expires": "2026-12-01T00:00:00Z", "encryption": None,
}
# (board, chip_id, running version_code 1, security floor 1, 4 MiB board slot, now)
FACTS = '("esp32-generic-4mb", 0, 1, 1, 0x180000, {now})'

DEVICE = """
import binascii
import mpota
from mpota import verify, errors
with open({pub!r}) as f:
    trusted = [f.read()]
class NoKey:  # an NVS namespace without a decryption key
    def get_blob(self, name, buf):
        raise OSError(-0x1102)
def attempt(raw, sig, facts):
    try:
        fields, key = mpota.drive(verify.release(raw, sig, trusted, facts, NoKey()))
        return ["ok", fields["version_code"], fields["key_id"]]
    except errors.OTAError as e:
        return [e.code, str(e)]
    except Exception as e:
        return ["CRASH " + e.__class__.__name__, str(e)]
cases = []
with open({cases!r}) as f:
    for line in f:
        raw, sig, now = json.loads(line)
        cases.append((binascii.unhexlify(raw), binascii.unhexlify(sig), now))
for raw, sig, now in cases:
    result(attempt(raw, sig, {facts}))
"""


class Signer:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.id = keys.key_id(self.key.public_key())
        self.pub = tmp / f"{self.id}.pub.pem"
        from cryptography.hazmat.primitives import serialization

        self.pub.write_bytes(self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def manifest(self, **changes: Any) -> bytes:
        fields = dict(BASE, key_id=self.id)
        fields.update(changes)
        fields = {k: v for k, v in fields.items() if v is not DROP}
        return json.dumps(fields, sort_keys=True).encode()

    def sign(self, raw: bytes) -> bytes:
        return keys.sign(self.key, raw)


DROP = object()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(tmp_path)


def on_device(signer: Signer, cases: list[tuple[bytes, bytes, int | None]],
              pub: Path | None = None) -> list[Any]:
    path = signer.tmp / "cases.jsonl"
    path.write_text("".join(json.dumps([r.hex(), s.hex(), n]) + "\n" for r, s, n in cases))
    code = DEVICE.format(pub=str(pub or signer.pub), cases=str(path),
                         facts=FACTS.format(now="now"))
    return unix_results(code)


def one(signer: Signer, raw: bytes, sig: bytes | None = None, now: int | None = NOW) -> list[Any]:
    (out,) = on_device(signer, [(raw, signer.sign(raw) if sig is None else sig, now)])
    return out


def test_host_signed_release_is_accepted(signer: Signer) -> None:
    assert one(signer, signer.manifest()) == ["ok", 2, signer.id]


def test_every_single_byte_change_of_the_manifest_is_rejected(signer: Signer) -> None:
    raw = signer.manifest()
    sig = signer.sign(raw)
    code = DEVICE.format(pub=str(signer.pub), cases="/dev/null", facts="None") + f"""
raw = binascii.unhexlify({raw.hex()!r})
sig = binascii.unhexlify({sig.hex()!r})
facts = {FACTS.format(now=NOW)}
accepted = []
kinds = {{}}
for i in range(len(raw)):
    bad = bytearray(raw)
    bad[i] ^= 0x01
    out = attempt(bytes(bad), sig, facts)
    kinds[out[0]] = kinds.get(out[0], 0) + 1
    if out[0] == "ok":
        accepted.append(i)
result([len(raw), accepted, kinds])
"""
    ((length, accepted, kinds),) = unix_results(code)
    assert length == len(raw) and accepted == []
    assert set(kinds) <= {"bad-signature", "unknown-key"}  # never a crash


def test_sampled_single_byte_changes_of_the_signature_are_rejected(signer: Signer) -> None:
    raw = signer.manifest()
    sig = signer.sign(raw)
    cases = []
    for i in range(0, 64, 3):
        for flip in (0x01, 0x80):
            bad = bytearray(sig)
            bad[i] ^= flip
            cases.append((raw, bytes(bad), NOW))
    outs = on_device(signer, cases)
    assert {o[0] for o in outs} == {"bad-signature"}


def test_manifest_too_large_is_refused_unread(signer: Signer) -> None:
    raw = signer.manifest(notes="x" * 5000)
    out = one(signer, raw)
    assert out[0] == "manifest-too-large" and "> 4096" in out[1]


def test_signature_of_wrong_length(signer: Signer) -> None:
    out = one(signer, signer.manifest(), sig=b"\x01" * 63)
    assert out == ["bad-signature", "signature 63 bytes, not 64"]


def test_wrong_key_is_unknown(signer: Signer, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = Signer(tmp_path / "other")
    raw = other.manifest()
    out = one(signer, raw, sig=other.sign(raw))
    assert out[0] == "unknown-key" and other.id in out[1] and signer.id in out[1]


def test_signed_by_trusted_key_but_naming_another(signer: Signer) -> None:
    out = one(signer, signer.manifest(key_id="0123456789abcdef"))
    assert out[0] == "bad-manifest" and "signed by " + signer.id in out[1]


@pytest.mark.parametrize(("changes", "kind", "words"), [
    ({"board": "esp32-generic-8mb"}, "wrong-board",
     "board 'esp32-generic-8mb', this is 'esp32-generic-4mb'"),
    ({"chip_id": 9}, "wrong-chip", "chip_id 9, this is 0"),
    ({"version_code": 1}, "downgrade", "version_code 1, running 1"),
    ({"version_code": 0}, "downgrade", "version_code 0, running 1"),
    ({"min_version_code": 2, "version_code": 3}, "downgrade", "needs version_code 2, running 1"),
    ({"security_counter": 0}, "security-counter", "security_counter 0 < floor 1"),
    ({"expires": "2026-09-01T00:00:00Z"}, "expired", "expired 2026-09-01T00:00:00Z"),
    ({"size": 0x180001, "payload_size": 0x180001}, "too-large", "1572865 bytes, slot 1572864"),
])
def test_each_policy_rejection(signer: Signer, changes: dict[str, Any], kind: str,
                               words: str) -> None:
    out = one(signer, signer.manifest(**changes))
    assert out[0] == kind and out[1] == words, out


def test_expiry_is_ignored_without_a_trusted_clock(signer: Signer) -> None:
    raw = signer.manifest(expires="2020-01-01T00:00:00Z")
    assert one(signer, raw, now=None)[0] == "ok"
    assert one(signer, raw, now=NOW)[0] == "expired"


@pytest.mark.parametrize(("raw", "words"), [
    (b"this is not json", "not strict JSON: not an object"),
    (b"[1, 2, 3]", "not strict JSON: not an object"),
    (b"\xff\xfe{}", "not strict JSON: not an object"),
    (b"{\"a\": \"\xff\"}", "not strict JSON: byte 0xff at 7"),
    (b"[" * 2000 + b"]" * 2000, "not strict JSON: not an object"),
    (b'{"notes": "' + b"x" * 4000 + b'"}', "no field "),  # the first one missing
    (b'{"a": ' * 400 + b"1" + b"}" * 400, "not strict JSON: nested > 8 at 48"),
    (b'{"a": 1} {"b": 2}', "not strict JSON: 8 bytes after '}'"),
    (b'{"a": 1, "a": 2}', "not strict JSON: duplicate key 'a'"),
    (b'{"a": 01}', "not strict JSON: expected ',' at 7"),
    (b'{"a" 1}', "not strict JSON: expected ':' at 5"),
])
def test_malformed_signed_manifests(signer: Signer, raw: bytes, words: str) -> None:
    out = one(signer, raw)
    assert out[0] == "bad-manifest" and out[1].startswith(words), out
    assert out[1] == words or words == "no field ", out


def test_a_manifest_over_the_limit_is_refused_unread(signer: Signer) -> None:
    out = one(signer, b"[" * 4000 + b" " * 97)
    assert out == ["manifest-too-large", "manifest 4097 bytes > 4096"]


@pytest.mark.parametrize(("changes", "words"), [
    ({"version_code": "2"}, "version_code is str, not int"),
    ({"version_code": True}, "version_code is bool, not int"),
    ({"version_code": -1}, "version_code -1 not in 0..2147483647"),
    ({"version": "v" * 500}, "len version 500 not in 1..31"),
    ({"board": DROP}, "no field board"),
    ({"sha256": "AB" * 32}, "sha256 not 64 lowercase hex"),
    ({"expires": "tomorrow"}, "bad date expires 'tomorrow'"),
    ({"format": 2}, "format 2 unsupported"),
    ({"payload_size": 1}, "plain payload is not the image"),
    ({"encryption": [1]}, "encryption is list, not dict"),
])
def test_wrong_fields(signer: Signer, changes: dict[str, Any], words: str) -> None:
    out = one(signer, signer.manifest(**changes))
    assert out == ["bad-manifest", words], out


def test_key_rotation_trusts_several_keys(signer: Signer, tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    new = Signer(tmp_path / "new")
    raw_old, raw_new = signer.manifest(), new.manifest()
    code = f"""
import binascii
import mpota
from mpota import verify, errors
facts = {FACTS.format(now=NOW)}
with open({str(signer.pub)!r}) as f:
    old_pem = f.read()
with open({str(new.pub)!r}) as f:
    new_pem = f.read()
for raw, sig in (({raw_old.hex()!r}, {signer.sign(raw_old).hex()!r}),
                 ({raw_new.hex()!r}, {new.sign(raw_new).hex()!r})):
    for trusted in ([old_pem, new_pem], [new_pem, old_pem]):
        f, _ = mpota.drive(verify.release(binascii.unhexlify(raw), binascii.unhexlify(sig),
                                          trusted, facts, None))
        result(f["key_id"])
try:
    mpota.drive(verify.release(binascii.unhexlify({raw_old.hex()!r}),
                               binascii.unhexlify({signer.sign(raw_old).hex()!r}), [new_pem],
                               facts, None))
except errors.ManifestError as e:
    result([e.code, str(e)])
"""
    out = unix_results(code)
    assert out == [signer.id, signer.id, new.id, new.id,
                   ["unknown-key", f"key {signer.id} not trusted ({new.id})"]]


def test_trusted_key_forms(signer: Signer) -> None:
    from cryptography.hazmat.primitives import serialization

    der = signer.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    point = keys.point_bytes(signer.key.public_key())
    rsa_like = bytes.fromhex("3059301306072a8648ce3d020106052b81040022034200") + point[:66]
    code = f"""
from mpota import keys, errors
def add(k):
    try:
        return keys.key_id(keys.point_bytes(keys.public_key(k)))
    except errors.ConfigError as e:
        return "error %s: %s" % (e.code, e)
result(add(binascii.unhexlify({der.hex()!r})))
result(add({point.hex()!r}))
result(add(binascii.unhexlify({point[:33].hex()!r})))
result(add("-----BEGIN PUBLIC KEY-----\\nnot base64\\n-----END PUBLIC KEY-----"))
result(add(binascii.unhexlify({(point[:-1] + bytes([point[-1] ^ 1])).hex()!r})))
result(add(binascii.unhexlify({rsa_like.hex()!r})))
result(add("-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----"))
result(add("not hex"))
"""
    out = unix_results("import binascii\n" + code)
    assert out[0] == out[1] == signer.id
    # 04 and x alone: neither form
    assert out[2] == "error bad-key: trusted key: not a P-256 point (33 bytes)"
    assert out[3].startswith("error bad-key: trusted key: ")
    assert out[4] == "error bad-key: trusted key: not a P-256 point (65 bytes)"
    assert out[5] == "error bad-key: trusted key: not ECDSA P-256"
    assert out[6] == "error bad-key: trusted key: not a PEM public key"
    assert out[7].startswith("error bad-key: trusted key: ")


def test_no_trusted_keys(signer: Signer, tmp_path: Path) -> None:
    code = f"""
import binascii
import mpota
from mpota import verify, errors
try:
    mpota.drive(verify.release(b"{{}}", b"x" * 64, [], {FACTS.format(now=NOW)}, None))
except errors.ManifestError as e:
    result([e.code, str(e)])
"""
    assert unix_results(code) == [["unknown-key", "no trusted key"]]


def test_a_trusted_key_that_cannot_be_read_is_a_config_error(signer: Signer) -> None:
    raw = signer.manifest()
    code = f"""
import binascii
import mpota
from mpota import verify, errors
try:
    mpota.drive(verify.release({raw!r}, {signer.sign(raw)!r},
                               ["-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----"],
                               {FACTS.format(now=NOW)}, None))
except errors.ConfigError as e:
    result([e.code, str(e)])
"""
    assert unix_results(code) == [["bad-key", "trusted key: not a P-256 point (3 bytes)"]]


def test_epoch_seconds_matches_cpython() -> None:
    import calendar
    import time

    stamps = ["1970-01-01T00:00:00Z", "2000-02-29T12:34:56Z", "2026-12-31T23:59:59Z",
              "2100-03-01T00:00:00Z"]
    code = "from mpota import manifest\n" + "".join(
        f"result(manifest.epoch_seconds({s!r}))\n" for s in stamps)
    expected = [calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ")) for s in stamps]
    assert unix_results(code) == expected


def test_a_release_made_by_mpota_release_passes_on_the_device(tmp_path: Path, firmware) -> None:
    from mpota_host import release

    pair = keys.generate(tmp_path / "keys")
    rel = tmp_path / "rel"
    release.make_release(firmware("2.0.0"), rel, "esp32-generic-4mb", "2.0.0", 7,
                         keys.load_private(pair.private), security_counter=3, expires=None)
    code = f"""
import mpota
from mpota import verify
with open({str(pair.public)!r}) as f:
    trusted = [f.read()]
with open({str(rel / "manifest.json")!r}, "rb") as f:
    raw = f.read()
with open({str(rel / "manifest.sig")!r}, "rb") as f:
    sig = f.read()
m, key = mpota.drive(verify.release(raw, sig, trusted,
                                    ("esp32-generic-4mb", 0, 6, 3, 0x180000, {NOW}), None))
result([m["version"], m["version_code"], m["security_counter"], m["key_id"], m["size"], key])
"""
    (out,) = unix_results(code)
    assert out == ["2.0.0", 7, 3, pair.key_id, firmware("2.0.0").stat().st_size, None]


@pytest.mark.parametrize("changes", [
    {"size": 0, "payload_size": 0},
    {"size": 0, "payload_size": 16, "encryption": {"alg": "aes-256-cbc",
     "kdf": "ecies-p256-hkdf-sha256-aeskw", "iv": "00" * 16, "recipients": [
         {"key_id": "ab" * 8, "epk": "04" + "11" * 64, "wrapped_key": "22" * 40}]}},
])
def test_an_empty_image_is_refused(signer: Signer, changes: dict[str, Any]) -> None:
    # size 0 once reached the agent and divided by zero on every poll
    out = one(signer, signer.manifest(**changes))
    assert out == ["bad-manifest", "size 0 not in 1..2147483647"]


def test_a_broken_signature_on_an_encrypted_manifest_is_a_bad_signature(signer: Signer) -> None:
    # The recipients' key_id comes first in the sorted bytes; the peek once took
    # it for the signer's and reported "unknown signing key <recipient id>".
    # A valid signature is found whatever the order of the keys tried.
    enc = {"alg": "aes-256-cbc", "kdf": "ecies-p256-hkdf-sha256-aeskw", "iv": "00" * 16,
           "recipients": [{"key_id": "cd" * 8, "epk": "04" + "11" * 64,
                           "wrapped_key": "22" * 40}]}
    raw = signer.manifest(encryption=enc, payload_size=65536, payload_sha256="cd" * 32)
    assert raw.index(b'"key_id": "cd') < raw.index(b'"key_id": "' + signer.id.encode())
    sig = bytearray(signer.sign(raw))
    sig[5] ^= 0x10
    out = one(signer, raw, sig=bytes(sig))
    assert out == ["bad-signature", f"signature does not verify ({signer.id})"], out
    # the signature and the fields pass; this device has no decryption key
    assert one(signer, raw) == ["no-decryption-key", "no decryption key in NVS"]
