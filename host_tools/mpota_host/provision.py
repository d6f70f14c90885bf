"""Putting secrets on a device: the decryption key (fleet-wide or generated on
the board). Works on anything that can run MicroPython code on the board and
return what it printed: the simulated board here, a serial board through
mpremote (``mpota provision``). The private key travels only inside the code
sent to the board; it is never printed, logged or returned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from . import keys, prompts
from .errors import MpotaError

# run(code) -> what the board printed
Runner = Callable[[str], str]


class ProvisionError(MpotaError):
    """The board did not accept a key."""


def _marker(output: str, prefix: str) -> str:
    for line in output.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise ProvisionError(f"the board did not confirm ({prefix.strip()} missing):\n{output[-800:]}")


def install_fleet_key(run: Runner, private_key: Path) -> str:
    """Install a fleet decryption key (encryption.pem) in the board's NVS; returns its id."""
    key = keys.load_private(private_key, ask=prompts.ask_passphrase)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    code = ("import esp32\nfrom mpota import enckey\n"
            f"print('MPOTA-KEY-ID', enckey.install(esp32.NVS('mpota'), {scalar!r}))\n")
    kid = _marker(run(code), "MPOTA-KEY-ID ")
    expected = keys.key_id(key.public_key())
    if kid != expected:
        raise ProvisionError(f"the board stored key {kid}, expected {expected}")
    return kid


def generate_device_key(run: Runner) -> ec.EllipticCurvePublicKey:
    """Have the board make its own key from os.urandom; returns only the public key."""
    code = ("import esp32, binascii\nfrom mpota import enckey\n"
            "print('MPOTA-KEY-PUB', binascii.hexlify(enckey.generate(esp32.NVS('mpota')))"
            ".decode())\n")
    point = bytes.fromhex(_marker(run(code), "MPOTA-KEY-PUB "))
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
