"""One corpus of odd manifests, each signed with a test key, judged by the host's
``verify`` and by the device's ``verify.release`` (unix port): the verdicts must agree."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import unix_results
from mpota_host import board, keys, release

NOW = 1_790_000_000  # 2026-09-21T14:13:20Z
PAYLOAD = b"\xa5" * 4096
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
BOARD = "esp32-generic-4mb"
ENCRYPTION = {"alg": "aes-256-cbc", "kdf": "ecies-p256-hkdf-sha256-aeskw", "iv": "00" * 16,
              "recipients": [{"key_id": "cd" * 8, "epk": "04" + "11" * 64,
                              "wrapped_key": "22" * 40}]}


def base(signer_id: str, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "format": 1, "board": BOARD, "chip_id": 0, "version": "2.0.0", "version_code": 2,
        "security_counter": 0, "size": 4096, "sha256": DIGEST, "payload_size": 4096,
        "payload_sha256": DIGEST, "created": "2026-09-01T00:00:00Z",
        "expires": "2026-12-01T00:00:00Z", "key_id": signer_id, "encryption": None,
        "notes": "a release",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not DROP}


DROP = object()


def encode(fields: dict[str, Any]) -> bytes:
    return (json.dumps(fields, indent=2, sort_keys=True) + "\n").encode()


def corpus(kid: str) -> dict[str, bytes]:
    good = encode(base(kid))
    body = good.rstrip(b"\n")
    assert body.endswith(b"}")

    def field(text: bytes) -> bytes:  # a raw line inserted as the first field
        return b"{\n  " + text + b",\n" + body[2:]

    def notes(raw: bytes) -> bytes:
        return good.replace(b'"a release"', raw)

    def nested(depth: int) -> bytes:
        return field(b'"x": ' + b"[" * depth + b"]" * depth)

    enc = dict(ENCRYPTION)
    cases = {
        "good": good,
        "good, compact": json.dumps(base(kid), separators=(",", ":")).encode(),
        "BOM": b"\xef\xbb\xbf" + good,
        "NaN": field(b'"x": NaN'),
        "Infinity": field(b'"x": Infinity'),
        "-Infinity": field(b'"x": -Infinity'),
        "raw tab in a string": notes(b'"a\trelease"'),
        "raw newline in a string": notes(b'"a\nrelease"'),
        "raw control byte in a string": notes(b'"a\x01release"'),
        "raw DEL in a string": notes(b'"a\x7frelease"'),
        "raw UTF-8 in a string": notes('"a réléase"'.encode()),
        "escaped non-ASCII": notes(b'"a r\\u00e9l\\u00e9ase \\ud83d\\ude00"'),
        "escaped lone surrogate": notes(b'"\\ud800"'),
        "escaped control character": notes(b'"a\\u001b[31mrelease"'),
        "invalid escape": notes(b'"a\\xrelease"'),
        "short unicode escape": notes(b'"a\\u00"'),
        "trailing NUL": good + b"\x00",
        "trailing garbage": good + b"garbage",
        "a second object": good + b"{}",
        "trailing whitespace": good + b" \r\n\t\n",
        "leading whitespace": b" \n" + good,
        "duplicate key": field(b'"version_code": 1'),
        "duplicate key, escaped": field(b'"\\u0076ersion_code": 1'),
        "duplicate key in the encryption header": encode(base(
            kid, encryption=enc, payload_sha256="ee" * 32)).replace(
                b'"alg": "aes-256-cbc"', b'"alg": "aes-256-cbc", "alg": "aes-256-cbc"'),
        "trailing comma": body[:-1].rstrip() + b",\n}\n",
        "missing comma": good.replace(b'"board": "esp32-generic-4mb",',
                                      b'"board": "esp32-generic-4mb"'),
        "missing colon": good.replace(b'"board": ', b'"board" '),
        "leading zero": field(b'"x": 01'),
        "bare decimal point": field(b'"x": 1.'),
        "plus sign": field(b'"x": +1'),
        "single quotes": field(b"'x': 1"),
        "huge float": field(b'"x": 1e400'),
        "huge integer": field(b'"x": 1' + b"0" * 400),
        "negative zero": field(b'"x": -0.0e-0'),
        "unknown nested fields": field(b'"x": {"a": [1, 2.5e3, null, true, false, "s", {}]}'),
        "nested 8 deep": nested(7),
        "nested 9 deep": nested(8),
        "nested 1500 deep": nested(1500),
        "nested objects 600 deep": field(b'"x": ' + b'{"a": ' * 600 + b"1" + b"}" * 600),
        "top-level array": b"[" + good + b"]",
        "top-level string": b'"hello"',
        "empty": b"",
        "size 0": encode(base(kid, size=0, payload_size=0)),
        "payload_size 0, encrypted": encode(base(kid, size=0, payload_size=0,
                                                 encryption=enc, payload_sha256=DIGEST)),
        "size as float": encode(base(kid, size=4096.0)),
        "chip_id as bool": encode(base(kid, chip_id=False)),
        "version_code as string": encode(base(kid, version_code="2")),
        "board missing": encode(base(kid, board=DROP)),
        "board null": encode(base(kid, board=None)),
        "uppercase hash": encode(base(kid, sha256=DIGEST.upper(), payload_sha256=DIGEST.upper())),
        "format 2": encode(base(kid, format=2)),
        "names another key": encode(base(kid, key_id="0123456789abcdef")),
        "created 30 February": encode(base(kid, created="2026-02-30T00:00:00Z")),
        "created 29 February of a leap year": encode(base(kid, created="2024-02-29T00:00:00Z")),
        "created 29 February 2100": encode(base(kid, created="2100-02-29T00:00:00Z")),
        "created with a leap second": encode(base(kid, created="2026-06-30T23:59:60Z")),
        "created before 1970": encode(base(kid, created="1969-12-31T23:59:59Z")),
        "created with a sign": encode(base(kid, created="+026-09-01T00:00:00Z")),
        "created with a space": encode(base(kid, created=" 026-09-01T00:00:00Z")),
        "created as a date": encode(base(kid, created="2026-09-01")),
        "created without Z": encode(base(kid, created="2026-09-01T00:00:00")),
        "created 24:00": encode(base(kid, created="2026-09-01T24:00:00Z")),
        "expires in days": encode(base(kid, expires="999999999d")),
        "expires in year 9999": encode(base(kid, expires="9999-12-31T23:59:59Z")),
        "expired": encode(base(kid, expires="2026-09-21T14:13:19Z")),
        "expires now": encode(base(kid, expires="2026-09-21T14:13:20Z")),
        "no expiry": encode(base(kid, expires=DROP)),
        "another board": encode(base(kid, board="esp32-generic-8mb")),
        "an unknown board": encode(base(kid, board="../../etc")),
        "another chip": encode(base(kid, chip_id=5)),
        "larger than the slot": encode(base(kid, size=0x180001, payload_size=4096)),
        "unencrypted sizes differ": encode(base(kid, size=4095)),
        "unencrypted hashes differ": encode(base(kid, sha256="ee" * 32)),
        "encrypted": encode(base(kid, encryption=enc, sha256="ee" * 32)),
        "encrypted, size rounds up": encode(base(kid, encryption=enc, size=4081,
                                                 sha256="ee" * 32)),
        "encrypted, payload not rounded": encode(base(kid, encryption=enc, size=4000,
                                                      sha256="ee" * 32)),
        "encrypted, other alg": encode(base(kid, encryption=dict(enc, alg="aes-128-cbc"))),
        "encrypted, no kdf": encode(base(kid, encryption={k: v for k, v in enc.items()
                                                          if k != "kdf"})),
        "encrypted, short iv": encode(base(kid, encryption=dict(enc, iv="00" * 15))),
        "encrypted, uppercase iv": encode(base(kid, encryption=dict(enc, iv="AB" * 16))),
        "encrypted, no recipients": encode(base(kid, encryption=dict(enc, recipients=[]))),
        "encrypted, 17 recipients": encode(base(kid, encryption=dict(
            enc, recipients=enc["recipients"] * 17))),
        "encrypted, recipients not a list": encode(base(kid, encryption=dict(
            enc, recipients=enc["recipients"][0]))),
        "encrypted, short epk": encode(base(kid, encryption=dict(
            enc, recipients=[dict(enc["recipients"][0], epk="04" + "11" * 63)]))),
        "encrypted, recipient not an object": encode(base(kid, encryption=dict(
            enc, recipients=["cd" * 8]))),
        "encryption not an object": encode(base(kid, encryption=[1])),
        "notes too long": encode(base(kid, notes="n" * 1025)),
        "version empty": encode(base(kid, version="")),
    }
    assert len(set(cases.values())) == len(cases)  # every replacement took
    return cases


def device_verdicts(tmp: Path, pub: Path, cases: list[tuple[bytes, bytes]],
                    slot_size: int) -> list[list[Any]]:
    lines = tmp / "cases.jsonl"
    lines.write_text("".join(json.dumps([r.hex(), s.hex()]) + "\n" for r, s in cases))
    code = f"""
import binascii
import mpota
from mpota import verify, errors
with open({str(pub)!r}) as f:
    trusted = [f.read()]
facts = ({BOARD!r}, 0, 0, 0, {slot_size}, {NOW})
class NoKey:  # an NVS namespace without a decryption key: the manifest's verdict is all
    def get_blob(self, name, buf):
        raise OSError(-0x1102)
with open({str(lines)!r}) as f:
    for line in f:
        raw, sig = json.loads(line)
        try:
            mpota.drive(verify.release(binascii.unhexlify(raw), binascii.unhexlify(sig),
                                       trusted, facts, NoKey()))
            result(["ok", ""])
        except errors.DecryptionError as e:
            result(["ok", e.code])  # the manifest passed; only the key is missing
        except errors.ManifestError as e:
            result([e.code, str(e)])
        except Exception as e:
            result(["CRASH " + e.__class__.__name__, str(e)])
"""
    return unix_results(code)


def test_host_verify_and_the_device_reach_the_same_verdict(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    kid = keys.key_id(key.public_key())
    pub = tmp_path / "signing.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    cases = corpus(kid)
    signed = [(raw, keys.sign(key, raw)) for raw in cases.values()]
    device = device_verdicts(tmp_path, pub, signed, board.load(BOARD).slot_size)
    now = dt.datetime.fromtimestamp(NOW, dt.timezone.utc)
    disagreements = []
    verdicts = {}
    for (name, raw), (_, sig), (kind, words) in zip(cases.items(), signed, device, strict=True):
        assert not kind.startswith("CRASH"), f"{name}: the device crashed: {kind} {words}"
        rel = tmp_path / f"rel{len(verdicts)}"
        rel.mkdir()
        (rel / release.MANIFEST).write_bytes(raw)
        (rel / release.SIGNATURE).write_bytes(sig)
        (rel / release.PAYLOAD).write_bytes(PAYLOAD)
        report = release.verify_release(rel, key.public_key(), now=now, board_name=BOARD)
        host = "ok" if report.ok else "; ".join(c.message for c in report.checks if not c.ok)
        verdicts[name] = kind == "ok"
        if report.ok != (kind == "ok"):
            disagreements.append(f"{name}: host {host!r}, device {kind} {words!r}")
    assert disagreements == []
    # the corpus is worth something only if it holds both verdicts
    assert [n for n, ok in verdicts.items() if ok] == [
        "good", "good, compact", "escaped non-ASCII", "escaped lone surrogate",
        "escaped control character", "trailing whitespace", "leading whitespace",
        "huge float", "huge integer", "negative zero", "unknown nested fields",
        "nested 8 deep", "created 29 February of a leap year", "expires in year 9999",
        "expires now", "no expiry", "encrypted", "encrypted, size rounds up"]
