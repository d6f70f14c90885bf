"""The host side's error tree: one base, one subclass per failure a user must tell apart.

Every message says what failed, the value seen, and what to do next. The CLI's
single ``main()`` turns these into a message on stderr and an exit code.
"""

from __future__ import annotations

import unicodedata

# Control, format (bidi overrides), surrogate, private-use and unassigned
# characters, and line/paragraph separators: never sent to a terminal raw.
_UNSAFE = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def printable(value: object) -> str:
    """``str(value)`` safe for a terminal or a log line: every control character
    (ANSI escapes included), bidi override and the like is shown as its Python
    escape (``\\x1b``, ``\\u202e``). Use it on anything that came from a device,
    a client or a file before printing it."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if unicodedata.category(ch) in _UNSAFE else ch for ch in text)


class MpotaError(Exception):
    """Base of every error the host tools raise on purpose."""

    exit_code = 1


class UsageError(MpotaError):
    """The user asked for something that cannot work as asked."""

    exit_code = 2


class BoardError(MpotaError):
    """A board definition (board.json, partitions.csv) is missing or wrong."""


class PartitionTableError(MpotaError):
    """A partition table, CSV or binary, is malformed or inconsistent."""


class FirmwareError(MpotaError):
    """A firmware image is not what the operation needs."""


class SimulatorError(MpotaError):
    """The simulated board could not be created, booted or read."""


class KeyFileError(MpotaError):
    """A key file is missing, unreadable, locked without a passphrase, or would be overwritten."""


class ReleaseError(MpotaError):
    """A release could not be made, or a release directory is not a release."""


class ServerError(MpotaError):
    """The update server cannot start or run: TLS material, releases directory, address, data."""


class DeviceError(MpotaError):
    """A device id or tag is malformed, already registered, or not registered."""


class FlashError(MpotaError):
    """Flashing over USB failed: no port or bootloader, the wrong chip, too little flash."""
