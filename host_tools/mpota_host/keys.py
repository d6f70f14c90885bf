"""ECDSA P-256 signing keys: create, store safely, load, and name them.

A key's id is the first 8 bytes of the SHA-256 of its uncompressed public
point, in hex; the device computes the same id from the key it trusts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .errors import KeyFileError

SIGNING_KEY = "signing.pem"
SIGNING_PUB = "signing.pub.pem"
PASSPHRASE_ENV = "MPOTA_KEY_PASSPHRASE"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def point_bytes(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def key_id(public: ec.EllipticCurvePublicKey) -> str:
    return hashlib.sha256(point_bytes(public)).digest()[:8].hex()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite a key; the mode is set at creation, not after.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.link(tmp, path)  # fails if path appeared meanwhile
    finally:
        tmp.unlink(missing_ok=True)


def generate(out_dir: Path, passphrase: bytes | None = None, name: str = "signing") -> KeyPair:
    """Write ``name.pem`` (PKCS#8, mode 0600) and ``name.pub.pem`` into out_dir."""
    private_path = out_dir / f"{name}.pem"
    public_path = out_dir / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(
                f"{path} already exists; mpota never overwrites a key. Choose another --out "
                "or move the old key away first."
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KeyFileError(
            f"cannot create key directory {out_dir}: {e.strerror}; choose a writable --out"
        ) from e
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        _write_new(private_path, pem, 0o600)
        try:
            _write_new(public_path, public_pem, 0o644)
        except BaseException:
            private_path.unlink()
            raise
    except FileExistsError as e:
        raise KeyFileError(
            f"{e.filename2 or e.filename} appeared while the key was made; mpota never "
            "overwrites a key"
        ) from e
    except OSError as e:
        raise KeyFileError(
            f"cannot write keys into {out_dir}: {e.strerror}; choose a writable --out"
        ) from e
    return KeyPair(private_path, public_path, key_id(key.public_key()))


def is_encrypted(data: bytes) -> bool:
    """Whether a PEM private key is protected by a passphrase."""
    return any(line.startswith((b"-----BEGIN ENCRYPTED", b"Proc-Type: 4,ENCRYPTED"))
               for line in data.splitlines())


def load_private(
    path: Path,
    passphrase: bytes | None = None,
    ask: Callable[[Path], str | None] | None = None,
) -> ec.EllipticCurvePrivateKey:
    """Load a P-256 private key.

    The passphrase of an encrypted key is, in this order: ``passphrase``,
    $MPOTA_KEY_PASSPHRASE, then ``ask(path)`` (the CLI prompts in a terminal;
    ``ask`` returns None when it cannot ask).
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read key {path}: {e.strerror}") from e
    if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
        raise KeyFileError(
            f"{path} is a public key; give the private key (the .pem beside it, without .pub)"
        )
    if passphrase is None and os.environ.get(PASSPHRASE_ENV):
        passphrase = os.environ[PASSPHRASE_ENV].encode()
    if passphrase is None and ask is not None and is_encrypted(data):
        text = ask(path)
        if text is not None:
            passphrase = text.encode()
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError as e:
        if passphrase is None:
            raise KeyFileError(
                f"{path} is encrypted: run in a terminal to be asked for its passphrase, "
                f"or set ${PASSPHRASE_ENV}"
            ) from e
        raise KeyFileError(
            f"{path} is not encrypted, but a passphrase was given: unset ${PASSPHRASE_ENV}"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(
            f"cannot load {path}: wrong passphrase or not a PEM private key ({_one_line(e)})"
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path} is not an ECDSA P-256 key; create one with 'mpota keygen'")
    return key


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def load_public(path: Path) -> ec.EllipticCurvePublicKey:
    """Load a P-256 public key (PEM); a private key file is accepted too."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read public key {path}: {e.strerror}") from e
    if b"PRIVATE KEY" in data:
        return load_private(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path} is not a PEM public key ({_one_line(e)})") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path} is not an ECDSA P-256 public key")
    return key


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA over SHA-256 as raw r||s (64 bytes, IEEE P1363)."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(public: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        public.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
