"""Encrypted releases (docs/encryption.md): AES-256-CBC payload, content key
wrapped per recipient with ECIES on P-256.

For each recipient public key Q: an ephemeral key pair (e, E = eG), the ECDH
secret Z = x(eQ), KEK = HKDF-SHA256(ikm=Z, salt=E, info=INFO || Q), and the
content key wrapped with RFC 3394 AES key wrap under KEK. The image is padded
with zero bytes to a multiple of 16 and encrypted with AES-256-CBC under the
content key and a random IV; the signed manifest carries the image's size and
SHA-256, so the padding needs no marker and a wrong key or altered ciphertext
fails the hash.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from . import keys
from .errors import ReleaseError

ALG = "aes-256-cbc"
KDF = "ecies-p256-hkdf-sha256-aeskw"
INFO = b"mpota-ecies-p256-hkdf-sha256-aeskw-v1"
MAX_RECIPIENTS = 16
_CHUNK = 1 << 16


def _kek(shared: bytes, epk: bytes, recipient_point: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=epk, info=INFO + recipient_point).derive(shared)


def wrap_for(content_key: bytes, recipient: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """One recipient entry of the manifest's encryption header."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    epk = keys.point_bytes(ephemeral.public_key())
    shared = ephemeral.exchange(ec.ECDH(), recipient)
    kek = _kek(shared, epk, keys.point_bytes(recipient))
    return {"key_id": keys.key_id(recipient), "epk": epk.hex(),
            "wrapped_key": aes_key_wrap(kek, content_key).hex()}


def unwrap(params: dict[str, Any], private: ec.EllipticCurvePrivateKey) -> bytes:
    """The content key, for a recipient holding ``private``."""
    kid = keys.key_id(private.public_key())
    entry = next((r for r in params.get("recipients", []) if r.get("key_id") == kid), None)
    if entry is None:
        ids = ", ".join(r.get("key_id", "?") for r in params.get("recipients", []))
        raise ReleaseError(f"the release is encrypted for {ids}, not for key {kid}")
    epk = bytes.fromhex(entry["epk"])
    try:
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), epk)
        shared = private.exchange(ec.ECDH(), ephemeral)
        kek = _kek(shared, epk, keys.point_bytes(private.public_key()))
        return aes_key_unwrap(kek, bytes.fromhex(entry["wrapped_key"]))
    except (ValueError, InvalidUnwrap) as e:
        raise ReleaseError(f"the content key does not unwrap with key {kid}: the wrapped key "
                           "or ephemeral key was altered") from e


def encrypt_file(source: Path, dest: Path,
                 recipients: list[ec.EllipticCurvePublicKey]) -> tuple[dict[str, Any], int, str]:
    """Encrypt ``source`` into ``dest``; returns (params, payload size, payload sha256)."""
    if not recipients:
        raise ReleaseError("an encrypted release needs at least one --encrypt-for key")
    if len(recipients) > MAX_RECIPIENTS:
        raise ReleaseError(f"{len(recipients)} recipients; at most {MAX_RECIPIENTS} fit a manifest")
    content_key, iv = os.urandom(32), os.urandom(16)
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as src, dest.open("wb") as out:
        while chunk := src.read(_CHUNK):
            if len(chunk) % 16:
                chunk += bytes(16 - len(chunk) % 16)  # zero padding: the manifest has the size
            data = encryptor.update(chunk)
            digest.update(data)
            out.write(data)
            size += len(data)
        out.write(encryptor.finalize())
    params = {"alg": ALG, "kdf": KDF, "iv": iv.hex(),
              "recipients": [wrap_for(content_key, r) for r in recipients]}
    return params, size, digest.hexdigest()


def decrypted_sha256(payload: Path, params: dict[str, Any], private: ec.EllipticCurvePrivateKey,
                     size: int) -> str:
    """SHA-256 of the first ``size`` plaintext bytes, as the device will compute it."""
    key = unwrap(params, private)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(bytes.fromhex(params["iv"]))).decryptor()
    digest = hashlib.sha256()
    left = size
    with payload.open("rb") as f:
        while chunk := f.read(_CHUNK):
            plain = decryptor.update(chunk)
            digest.update(plain[:left])
            left -= min(left, len(plain))
    return digest.hexdigest()
