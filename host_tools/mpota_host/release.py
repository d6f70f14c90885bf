"""Signed releases: ``manifest.json`` + ``manifest.sig`` (raw r||s) + ``payload``.

:func:`make_release` runs the pre-flight check with esptool's parser, then
writes the three files into a temporary directory that is renamed into place
only when complete. :func:`verify_release` checks a release the way a device
will, and reports every check by name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from . import board as boards
from . import encryption, keys
from .appimage import ImageFacts, check_app_image
from .errors import MpotaError, ReleaseError

FORMAT = 1
MAX_MANIFEST = 4096
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PAYLOAD = "payload"
_STAMP = "%Y-%m-%dT%H:%M:%SZ"

# name: (type, required, low, high): the value's range for an int, its length
# for a str. The device's manifest._FIELDS is the same table (a test keeps them equal).
FIELDS: dict[str, tuple[type, bool, int, int]] = {
    "format": (int, True, 0, 255),
    "board": (str, True, 1, 32),
    "chip_id": (int, True, 0, 0xFFFF),
    "version": (str, True, 1, 31),
    "version_code": (int, True, 0, 0x7FFFFFFF),
    "security_counter": (int, True, 0, 0x7FFFFFFF),
    "size": (int, True, 1, 0x7FFFFFFF),
    "sha256": (str, True, 1, 64),
    "payload_size": (int, True, 1, 0x7FFFFFFF),
    "payload_sha256": (str, True, 1, 64),
    "created": (str, True, 1, 20),
    "expires": (str, False, 1, 20),
    "key_id": (str, True, 1, 16),
    "encryption": (dict, False, 0, 0),
    "min_version_code": (int, False, 0, 0x7FFFFFFF),
    "notes": (str, False, 1, 1024),
}
# Containers nested deeper than this are refused, as on the device.
MAX_DEPTH = 8
_STAMP_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
ALG = "aes-256-cbc"
KDF = "ecies-p256-hkdf-sha256-aeskw"
_RECIPIENT_HEX = (("key_id", 16), ("epk", 130), ("wrapped_key", 80))


def stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime(_STAMP)


def parse_when(text: str) -> dt.datetime:
    """'2026-12-31', '2026-12-31T12:00:00Z' or '30d' / '12h' from now, as UTC."""
    text = text.strip()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    if text[-1:] in ("d", "h") and text[:-1].isdigit():
        unit = "days" if text[-1] == "d" else "hours"
        return now + dt.timedelta(**{unit: int(text[:-1])})
    for fmt in (_STAMP, "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
    raise ReleaseError(f"date {text!r} is not YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, Nd or Nh")


def parse_stamp(text: str) -> dt.datetime:
    """A manifest date: exactly 'YYYY-MM-DDTHH:MM:SSZ', a real UTC date and time
    in 1970-9999 without a leap second (the device's rule).

    Raises:
        ValueError: Naming the value.
    """
    if not _STAMP_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not YYYY-MM-DDTHH:MM:SSZ")
    when = dt.datetime.strptime(text, _STAMP).replace(tzinfo=dt.timezone.utc)
    if when.year < 1970:
        raise ValueError(f"{text!r} is before 1970")
    return when


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def load_manifest(raw: bytes) -> dict[str, Any]:
    """Parse manifest bytes as strictly as a device does: one JSON object in
    printable ASCII (no BOM, no raw control characters, nothing after it), no
    NaN or Infinity, no duplicate keys, nested at most ``MAX_DEPTH`` deep.

    Raises:
        ReleaseError: Naming the first fault.
    """
    bad = next((i for i, b in enumerate(raw) if b not in _PRINTABLE), None)
    if bad is not None:
        raise ReleaseError(f"manifest is not strict JSON: byte 0x{raw[bad]:02x} at {bad} is not "
                           "printable ASCII (escape it as \\uXXXX)")
    try:
        fields = json.loads(raw.decode("ascii"), object_pairs_hook=_unique_keys,
                            parse_constant=_refuse_constant)
    except RecursionError:
        raise ReleaseError(f"manifest is not strict JSON: nested deeper than {MAX_DEPTH}") from None
    except ValueError as e:
        raise ReleaseError(f"manifest is not strict JSON: {e}") from None
    if not isinstance(fields, dict):
        raise ReleaseError(f"manifest must be a JSON object, not {type(fields).__name__}")
    if _too_deep(fields):
        raise ReleaseError(f"manifest is not strict JSON: nested deeper than {MAX_DEPTH}")
    return fields


def sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def build_manifest(
    image: ImageFacts,
    sha256: str,
    board: boards.Board,
    version: str,
    version_code: int,
    key_id: str,
    security_counter: int = 0,
    expires: dt.datetime | None = None,
    min_version_code: int | None = None,
    notes: str | None = None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "format": FORMAT,
        "board": board.name,
        "chip_id": board.chip_id,
        "version": version,
        "version_code": version_code,
        "security_counter": security_counter,
        "size": image.size,
        "sha256": sha256,
        "payload_size": image.size,
        "payload_sha256": sha256,
        "created": stamp(dt.datetime.now(dt.timezone.utc)),
        "expires": stamp(expires) if expires else None,
        "key_id": key_id,
        "encryption": None,
    }
    if min_version_code is not None:
        fields["min_version_code"] = min_version_code
    if notes:
        fields["notes"] = notes
    problems = schema_problems(fields)
    if problems:
        raise ReleaseError("; ".join(problems))
    return fields


def encode_manifest(fields: dict[str, Any]) -> bytes:
    raw = (json.dumps(fields, indent=2, sort_keys=True) + "\n").encode()
    if len(raw) > MAX_MANIFEST:
        raise ReleaseError(f"manifest is {len(raw)} bytes, devices accept {MAX_MANIFEST}: "
                           "shorten the notes")
    return raw


def make_release(
    firmware: Path,
    out: Path,
    board_name: str | Path,
    version: str,
    version_code: int,
    signing_key: ec.EllipticCurvePrivateKey,
    security_counter: int = 0,
    expires: dt.datetime | None = None,
    min_version_code: int | None = None,
    notes: str | None = None,
    encrypt_for: list[ec.EllipticCurvePublicKey] | None = None,
    review: Callable[[ImageFacts], None] | None = None,
) -> dict[str, Any]:
    """Pre-flight FIRMWARE for BOARD, then write a signed release directory OUT.

    With ``encrypt_for`` the payload is the AES-256-CBC ciphertext of the image
    and the content key is wrapped for each of those public keys. ``review`` is
    called with the checked image before anything is written (the CLI refuses
    likely mistakes there: see :func:`likely_mistakes`)."""
    if out.exists():
        raise ReleaseError(f"{out} already exists; releases are never overwritten")
    board = boards.load(board_name)
    image = check_app_image(firmware, board.chip_id, board.slot_size)
    if review is not None:
        review(image)
    _, sha256 = sha256_file(firmware)
    fields = build_manifest(
        image, sha256, board, version, version_code, keys.key_id(signing_key.public_key()),
        security_counter, expires, min_version_code, notes,
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise ReleaseError(
            f"cannot create the release {out}: {e.strerror} ({e.filename}); choose a writable "
            "--out"
        ) from e
    try:
        if encrypt_for:
            params, payload_size, payload_sha = encryption.encrypt_file(
                firmware, staging / PAYLOAD, encrypt_for)
            fields.update(encryption=params, payload_size=payload_size,
                          payload_sha256=payload_sha)
        else:
            shutil.copyfile(firmware, staging / PAYLOAD)
        raw = encode_manifest(fields)
        (staging / MANIFEST).write_bytes(raw)
        (staging / SIGNATURE).write_bytes(keys.sign(signing_key, raw))
        os.chmod(staging, 0o755)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return fields


def _bare_version(text: str) -> str:
    text = text.strip()
    return text[1:] if text[:1] in ("v", "V") and text[1:2].isdigit() else text


def _kind_by_name(path: Path) -> str | None:
    """'signing' or 'encryption' when the file is named as mpota keygen names them."""
    name = path.name.lower()
    for kind in ("signing", "encryption"):
        if name.startswith(kind):
            return kind
    return None


def _kind_by_sibling(path: Path, key_id: str) -> str | None:
    """'signing' or 'encryption' when a public key of that name beside ``path`` is the
    same key (mpota keygen writes NAME.pem and NAME.pub.pem side by side)."""
    for kind in ("signing", "encryption"):
        sibling = path.parent / f"{kind}.pub.pem"
        if sibling == path or not sibling.is_file():
            continue
        try:
            if keys.key_id(keys.load_public(sibling)) == key_id:
                return kind
        except MpotaError:
            continue  # an unreadable neighbour says nothing about this key
    return None


def likely_mistakes(
    image: ImageFacts,
    version: str,
    expires: dt.datetime | None,
    signing: tuple[Path, ec.EllipticCurvePrivateKey],
    recipients: list[tuple[Path, ec.EllipticCurvePublicKey]],
    now: dt.datetime | None = None,
) -> list[str]:
    """What in a release command is most likely a mistake, one sentence each (empty
    when nothing is): a --version that disagrees with the image's app descriptor, an
    expiry already past, the encryption key given as the signing key or the other way
    round. ``mpota release`` refuses these unless --force."""
    problems = []
    described = image.version.strip()
    if described and _bare_version(described) != _bare_version(version):
        problems.append(
            f"--version {version} disagrees with the image, whose app descriptor says "
            f"{described}: give --version {_bare_version(described)}"
        )
    now = now or dt.datetime.now(dt.timezone.utc)
    if expires is not None and expires <= now:
        problems.append(
            f"--expires {stamp(expires)} is already past (now {stamp(now)}): devices would "
            "refuse the release; give a later date or a duration such as 90d"
        )
    key_path, key = signing
    signing_id = keys.key_id(key.public_key())
    if (_kind_by_name(key_path) == "encryption"
            or _kind_by_sibling(key_path, signing_id) == "encryption"):
        problems.append(
            f"--key {key_path} is an encryption key (key id {signing_id}): sign with the "
            "signing key (signing.pem) and give encryption keys' .pub.pem to --encrypt-for"
        )
    for path, public in recipients:
        rid = keys.key_id(public)
        if rid == signing_id:
            problems.append(
                f"--encrypt-for {path} is the signing key itself (key id {rid}): encrypt for "
                "the fleet's encryption key (mpota keygen --kind encryption)"
            )
        elif _kind_by_name(path) == "signing" or _kind_by_sibling(path, rid) == "signing":
            problems.append(
                f"--encrypt-for {path} is a signing key (key id {rid}): encrypt for the "
                "fleet's encryption.pub.pem (mpota keygen --kind encryption)"
            )
    return problems


def schema_problems(fields: Any) -> list[str]:
    """What is wrong with a manifest's fields (empty when nothing is): the
    device's rules for types, ranges, hex digests, dates and the encryption header."""
    if not isinstance(fields, dict):
        return [f"manifest must be a JSON object, not {type(fields).__name__}"]
    problems = []
    for name, (kind, required, low, high) in FIELDS.items():
        value = fields.get(name)
        if value is None:
            if required:
                problems.append(f"missing required field {name!r}")
            continue
        if type(value) is not kind:  # bool is not an int here
            problems.append(f"field {name!r} must be {kind.__name__}, not {type(value).__name__}")
        elif isinstance(value, str) and not low <= len(value) <= high:
            problems.append(f"field {name!r} must be {low}-{high} characters, not {len(value)}")
        elif isinstance(value, int) and not low <= value <= high:
            problems.append(f"field {name!r} = {value} is outside {low}..{high}")
    if problems:
        return problems
    if fields["format"] != FORMAT:
        problems.append(f"format {fields['format']} is not supported (expected {FORMAT})")
    for name in ("sha256", "payload_sha256"):
        if not _HEX64.fullmatch(fields[name]):
            problems.append(f"field {name!r} must be 64 lowercase hex digits")
    for name in ("created", "expires"):
        if fields.get(name) is not None:
            try:
                parse_stamp(fields[name])
            except ValueError as e:
                problems.append(f"field {name!r}: {e}")
    if fields.get("encryption") is None:
        if fields["payload_size"] != fields["size"] or \
                fields["payload_sha256"] != fields["sha256"]:
            problems.append("an unencrypted payload must have the image's size and hash")
    else:
        problems += _encryption_problems(fields)
    return problems


def _encryption_problems(fields: dict[str, Any]) -> list[str]:
    enc = fields["encryption"]
    if enc.get("alg") != ALG or enc.get("kdf") != KDF:
        return [f"encryption {enc.get('alg')!r} / {enc.get('kdf')!r} is not supported "
                f"(devices read {ALG} with {KDF})"]
    problems = []
    iv = enc.get("iv")
    if not (isinstance(iv, str) and len(iv) == 32 and all(c in "0123456789abcdef" for c in iv)):
        problems.append("encryption iv must be 32 lowercase hex digits")
    recipients = enc.get("recipients")
    if type(recipients) is not list or not 0 < len(recipients) <= 16:
        problems.append("encryption recipients must be a list of 1-16 entries")
    elif not all(isinstance(r, dict) and all(
            isinstance(r.get(k), str) and len(r[k]) == n
            and all(c in "0123456789abcdef" for c in r[k]) for k, n in _RECIPIENT_HEX)
            for r in recipients):
        problems.append("each recipient needs key_id (16 hex), epk (130 hex) and "
                        "wrapped_key (80 hex)")
    if fields["payload_size"] != (fields["size"] + 15) // 16 * 16:
        problems.append(f"encrypted payload_size {fields['payload_size']} is not the image size "
                        f"{fields['size']} rounded up to 16")
    return problems


@dataclass
class Check:
    name: str
    ok: bool
    message: str


@dataclass
class Report:
    """Every check of :func:`verify_release`, in order."""

    directory: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, message: str) -> bool:
        self.checks.append(Check(name, ok, message))
        return ok


def read_release(directory: Path) -> tuple[bytes, bytes, Path]:
    missing = [n for n in (MANIFEST, SIGNATURE, PAYLOAD) if not (directory / n).is_file()]
    if missing:
        raise ReleaseError(f"{directory} is not a release: missing {', '.join(missing)}")
    try:
        with (directory / PAYLOAD).open("rb"):
            pass  # readable: it is hashed later
        return (directory / MANIFEST).read_bytes(), (directory / SIGNATURE).read_bytes(), (
            directory / PAYLOAD
        )
    except OSError as e:
        raise ReleaseError(f"cannot read release {directory}: {e.strerror} ({e.filename}): "
                           "check its permissions") from e


def verify_release(
    directory: Path,
    public: ec.EllipticCurvePublicKey,
    now: dt.datetime | None = None,
    board_name: str | Path | None = None,
    decrypt_with: ec.EllipticCurvePrivateKey | None = None,
) -> Report:
    """Check signature, key id, fields, sizes, hashes, expiry and board fit; with
    ``decrypt_with``, that this recipient can decrypt the image it was promised."""
    raw, sig, payload = read_release(directory)
    report = Report(directory)
    if not report.add("manifest size", len(raw) <= MAX_MANIFEST,
                      f"manifest is {len(raw)} bytes (limit {MAX_MANIFEST})"):
        return report
    signed = keys.verify(public, raw, sig)
    report.add("signature", signed,
               "signature verifies with key " + keys.key_id(public) if signed else
               f"signature ({len(sig)} bytes) does not verify with key {keys.key_id(public)}: "
               "the manifest or signature was altered, or another key signed it")
    try:
        fields = load_manifest(raw)
    except ReleaseError as e:
        report.add("manifest format", False, str(e))
        return report
    problems = schema_problems(fields)
    report.add("manifest format", not problems, "; ".join(problems) or "all fields well-formed")
    if problems:
        return report
    report.manifest = fields
    expected_id = keys.key_id(public)
    report.add("key id", fields["key_id"] == expected_id,
               f"manifest names key {fields['key_id']}, the given key is {expected_id}")
    size, digest = sha256_file(payload)
    report.add("payload size", size == fields["payload_size"],
               f"payload is {size} bytes, manifest says {fields['payload_size']}")
    report.add("payload hash", digest == fields["payload_sha256"],
               f"payload SHA-256 {digest[:16]}..., manifest says "
               f"{fields['payload_sha256'][:16]}...")
    if fields.get("encryption") is None:
        report.add("image hash", digest == fields["sha256"] and size == fields["size"],
                   "unencrypted payload must equal the image (size and sha256)")
        if decrypt_with is not None:
            report.add("decryption", False, "the release is not encrypted")
    elif decrypt_with is not None:
        _check_decryption(report, fields, payload, decrypt_with)
    _check_expiry(report, fields, now or dt.datetime.now(dt.timezone.utc))
    _check_board(report, fields, board_name)
    return report


def _check_decryption(report: Report, fields: dict[str, Any], payload: Path,
                      private: ec.EllipticCurvePrivateKey) -> None:
    try:
        plain = encryption.decrypted_sha256(payload, fields["encryption"], private,
                                            fields["size"])
    except (ReleaseError, KeyError, ValueError) as e:
        report.add("decryption", False, str(e))
        return
    report.add("decryption", True, f"key {keys.key_id(private.public_key())} unwraps the "
               "content key")
    report.add("plaintext hash", plain == fields["sha256"],
               f"decrypted image SHA-256 {plain[:16]}..., manifest says {fields['sha256'][:16]}...")


def _check_expiry(report: Report, fields: dict[str, Any], now: dt.datetime) -> None:
    if fields.get("expires") is None:
        report.add("expiry", True, "no expiry")
        return
    expires = parse_stamp(fields["expires"])  # schema_problems checked it
    report.add("expiry", now <= expires, f"expires {fields['expires']} (now {stamp(now)})")


def _check_board(report: Report, fields: dict[str, Any], board_name: str | Path | None) -> None:
    named: str = fields["board"]
    if board_name is None and named not in boards.known():
        # a name from the manifest is looked up among the known boards only, never as a path
        report.add("board", True, f"board {named!r} is not defined here: give --board to "
                   "check the fit")
        return
    name = board_name or named
    try:
        board = boards.load(name)
    except MpotaError as e:
        report.add("board", board_name is None, f"board {name} unknown here ({e})")
        return
    report.add("board", fields["board"] == board.name and fields["chip_id"] == board.chip_id,
               f"release is for {fields['board']} (chip id {fields['chip_id']}), "
               f"board is {board.name} (chip id {board.chip_id})")
    report.add("fits slot", fields["size"] <= board.slot_size
               and fields["payload_size"] <= board.slot_size + 16,
               f"image {fields['size']} bytes (payload {fields['payload_size']}), "
               f"slot {board.slot_size} bytes")
