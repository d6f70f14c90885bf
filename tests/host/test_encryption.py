"""keygen --kind encryption, release --encrypt-for, inspect, verify --decrypt-with."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mpota_host import encryption, keys
from mpota_host.errors import ReleaseError
from test_release import mpota


@pytest.fixture
def encrypted(tmp_path: Path, firmware: Callable[..., Path]) -> Path:
    mpota("keygen", "--out", "keys", cwd=tmp_path)
    out = mpota("keygen", "--kind", "encryption", "--out", "keys", cwd=tmp_path).stdout
    assert "keys/encryption.pem" in out and "give to mpota release" in out
    mpota("keygen", "--kind", "encryption", "--out", "second", cwd=tmp_path)
    out = mpota("release", str(firmware("2.0.0")), "--version", "2.0.0", "--version-code", "2",
                "--board", "esp32-generic-4mb", "--key", "keys/signing.pem", "--out", "rel",
                "--encrypt-for", "keys/encryption.pub.pem",
                "--encrypt-for", "second/encryption.pub.pem", cwd=tmp_path).stdout
    assert "encrypted (AES-256-CBC) for" in out
    return tmp_path


def test_manifest_carries_both_hashes_and_recipients(encrypted: Path,
                                                     firmware: Callable[..., Path]) -> None:
    fields = json.loads((encrypted / "rel" / "manifest.json").read_text())
    image = firmware("2.0.0").read_bytes()
    payload = (encrypted / "rel" / "payload").read_bytes()
    assert fields["size"] == len(image) and fields["payload_size"] == len(payload)
    assert fields["sha256"] != fields["payload_sha256"]
    enc = fields["encryption"]
    assert enc["alg"] == "aes-256-cbc" and enc["kdf"] == "ecies-p256-hkdf-sha256-aeskw"
    ids = {keys.key_id(keys.load_public(encrypted / d / "encryption.pub.pem"))
           for d in ("keys", "second")}
    assert {r["key_id"] for r in enc["recipients"]} == ids
    private = (encrypted / "keys" / "encryption.pem").read_text()
    assert "PRIVATE" not in (encrypted / "rel" / "manifest.json").read_text()
    assert private.split("\n")[1] not in (encrypted / "rel" / "manifest.json").read_text()


def test_inspect_shows_recipients(encrypted: Path) -> None:
    info = json.loads(mpota("inspect", "rel", "--json", cwd=encrypted).stdout)
    assert info["encrypted"] is True and len(info["recipients"]) == 2


def test_each_recipient_can_decrypt(encrypted: Path) -> None:
    for who in ("keys", "second"):
        out = mpota("verify", "rel", "--pubkey", "keys/signing.pub.pem", "--decrypt-with",
                    f"{who}/encryption.pem", cwd=encrypted).stdout
        assert "ok   plaintext hash" in out and "valid release" in out


def test_a_stranger_cannot_decrypt(encrypted: Path) -> None:
    mpota("keygen", "--kind", "encryption", "--out", "stranger", cwd=encrypted)
    proc = mpota("verify", "rel", "--pubkey", "keys/signing.pub.pem", "--decrypt-with",
                 "stranger/encryption.pem", cwd=encrypted, check=False)
    assert proc.returncode == 1 and "FAIL decryption" in proc.stdout
    assert "not for key" in proc.stdout


def test_altered_ciphertext_fails_the_plaintext_hash(encrypted: Path) -> None:
    payload = encrypted / "rel" / "payload"
    raw = bytearray(payload.read_bytes())
    raw[30000] ^= 1
    payload.write_bytes(raw)
    proc = mpota("verify", "rel", "--pubkey", "keys/signing.pub.pem", "--decrypt-with",
                 "keys/encryption.pem", cwd=encrypted, check=False)
    assert "FAIL payload hash" in proc.stdout and "FAIL plaintext hash" in proc.stdout


def test_altered_wrapped_key_is_named(encrypted: Path) -> None:
    fields = json.loads((encrypted / "rel" / "manifest.json").read_text())
    private = keys.load_private(encrypted / "keys" / "encryption.pem")
    entry = next(r for r in fields["encryption"]["recipients"]
                 if r["key_id"] == keys.key_id(private.public_key()))
    wrapped = bytearray.fromhex(entry["wrapped_key"])
    wrapped[3] ^= 1
    entry["wrapped_key"] = wrapped.hex()
    with pytest.raises(ReleaseError, match="does not unwrap"):
        encryption.unwrap(fields["encryption"], private)


def test_verify_decrypt_with_on_a_plain_release(tmp_path: Path,
                                                firmware: Callable[..., Path]) -> None:
    mpota("keygen", "--out", "keys", cwd=tmp_path)
    mpota("keygen", "--kind", "encryption", "--out", "keys", cwd=tmp_path)
    mpota("release", str(firmware("2.0.0")), "--version", "2.0.0", "--version-code", "2",
          "--board", "esp32-generic-4mb", "--key", "keys/signing.pem", "--out", "rel",
          cwd=tmp_path)
    proc = mpota("verify", "rel", "--pubkey", "keys/signing.pub.pem", "--decrypt-with",
                 "keys/encryption.pem", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "the release is not encrypted" in proc.stdout
