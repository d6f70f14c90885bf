"""SlotWriter on the unix port with a partition in RAM: resume at any saved
offset, the CBC IV after a resume, invalidation of a slot that fails its check."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from helpers import RAM_FAKES, unix_results

SETUP = RAM_FAKES + """
import binascii
import mpota
from mpota import slot, errors

buf = memoryview(bytearray(4096))
image = binascii.unhexlify({image!r})
payload = binascii.unhexlify({payload!r})
key = binascii.unhexlify({key!r}) if {key!r} else None
iv = binascii.unhexlify({iv!r}) if {iv!r} else None
sha = {sha!r}

def writer(part):
    return slot.SlotWriter(part, len(image), buf, key, iv, len(payload))

def outcome(f):
    try:
        return ["ok", f()]
    except errors.OTAError as e:
        return [e.__class__.__name__, str(e)]
"""

# after a first, complete pass: the saved offset (any value), then resume and finish
RESUME = """
part = Part(8)
w = writer(part)
mpota.drive(w.pull(Body(payload), len(payload)))
for saved in {offsets}:
    def resumed():
        w = writer(part)
        w.resume(saved)
        at = w.committed
        pre = w.iv_needed()
        if pre:
            w.set_iv(payload[at - pre:at])
        mpota.drive(w.pull(Body(payload[at:]), len(payload) - at))
        mpota.drive(w.check(sha))
        return at
    result(outcome(resumed))
"""


def _image(size: int) -> bytes:
    body = bytearray(os.urandom(size))
    body[0] = 0xE9
    return bytes(body)


def _args(image: bytes, encrypted: bool, pad_to: int | None = None) -> dict[str, str]:
    if not encrypted:
        return {"image": image.hex(), "payload": image.hex(), "key": "", "iv": "",
                "sha": hashlib.sha256(image).hexdigest()}
    key, iv = os.urandom(32), os.urandom(16)
    size = pad_to or -(-len(image) // 16) * 16
    plain = image + b"\0" * (size - len(image))
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    payload = enc.update(plain) + enc.finalize()
    return {"image": image.hex(), "payload": payload.hex(), "key": key.hex(), "iv": iv.hex(),
            "sha": hashlib.sha256(image).hexdigest()}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_resume_at_any_saved_offset(encrypted: bool) -> None:
    image = _image(3 * 4096 + 1000)
    total = 3 * 4096 + 1008 if encrypted else len(image)
    offsets = [total, total - 1, 3 * 4096, 3 * 4096 + 1, 4096, 100, 0, total + 1, -5,
               10 * 4096]
    got = unix_results(SETUP.format(**_args(image, encrypted)) + RESUME.format(offsets=offsets))
    expected_at = [12288, 12288, 12288, 12288, 4096, 0, 0, 0, 0, 0]
    assert got == [["ok", at] for at in expected_at]


def test_resume_where_the_image_ends_inside_the_last_kept_block() -> None:
    # an encrypted payload longer than the image (padding): the hash covers the image only
    image = _image(2 * 4096 - 8)
    args = _args(image, True, pad_to=2 * 4096)
    got = unix_results(SETUP.format(**args) + RESUME.format(offsets=[2 * 4096]))
    assert got == [["ok", 8192]]


def test_encrypted_resume_without_the_iv_writes_nothing() -> None:
    image = _image(3 * 4096)
    code = SETUP.format(**_args(image, True)) + """
part = Part(8)
w = writer(part)
mpota.drive(w.pull(Body(payload), 4096))
before = bytes(part.mem)
w = writer(part)
w.resume(4096)
result(outcome(lambda: mpota.drive(w.pull(Body(payload[4096:]), 4096))))
result(bytes(part.mem) == before)
"""
    got = unix_results(code)
    assert got[0][0] == "StateError" and "CBC IV" in got[0][1], got
    assert got[1] is True


@pytest.mark.parametrize("where", ["payload", "flash", "resumed"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_slot_that_fails_its_check_is_invalidated(where: str, encrypted: bool) -> None:
    # one hash, of the slot read back: it catches a payload that is not the
    # manifest's, flash that does not hold what was written, and a resume over
    # blocks that changed on flash since they were written
    image = _image(2 * 4096 + 500)
    code = SETUP.format(**_args(image, encrypted)) + f"""
part = Part(8)
w = writer(part)
body = bytearray(payload)
if {where!r} == "payload":
    body[5000] ^= 1
mpota.drive(w.pull(Body(body), len(body)))
if {where!r} == "flash":
    part.mem[5000] ^= 1  # flash that does not hold what was written
if {where!r} == "resumed":
    part.mem[100] ^= 1  # a kept block changed before the resume
    w = writer(part)
    w.resume(4096)
    if w.iv_needed():
        w.set_iv(payload[4096 - 16:4096])
    mpota.drive(w.pull(Body(payload[4096:]), len(payload) - 4096))
result(outcome(lambda: mpota.drive(w.check(sha))))
result([part.mem[:4096] == b"\\xff" * 4096, part.mem[4096:8192] != b"\\xff" * 4096])
"""
    got = unix_results(code)
    assert got[0][0] == "ImageError" and "does not match the manifest's" in got[0][1], got
    assert got[1] == [True, True]
