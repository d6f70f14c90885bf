"""The host side's error tree: one base, one subclass per failure a user must tell apart.

Every message says what failed, the value seen, and what to do next. The CLI's
single ``main()`` turns these into one line on stderr and the error's ``exit_code``:

* 0: success, and only success;
* 1 (``EXIT_FAILED``): refused or failed (a bad file, a wrong key, a check that failed);
* 2 (``EXIT_USAGE``): the command line itself is wrong (a missing or malformed option);
* 3 (``EXIT_UNREACHABLE``): the board did not answer (port absent, busy or silent);
* 130 (``EXIT_INTERRUPTED``): interrupted (Ctrl-C); the message says where things stand.
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


EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


class MpotaError(Exception):
    """Base of every error the host tools raise on purpose; ``exit_code`` is the
    command's exit status when it ends with this error."""

    exit_code = EXIT_FAILED


class UsageError(MpotaError):
    """The user asked for something that cannot work as asked."""

    exit_code = EXIT_USAGE


class UnreachableError(MpotaError):
    """The board did not answer: its port is absent or busy, or nothing answers on it."""

    exit_code = EXIT_UNREACHABLE


class Interrupted(MpotaError):
    """Ctrl-C: the message says what state things were left in and how to resume."""

    exit_code = EXIT_INTERRUPTED


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


class BootloaderUnreachableError(FlashError, UnreachableError):
    """No ESP32 ROM bootloader answered on the port (exit code 3)."""


class FlashInterrupted(FlashError, Interrupted):
    """Ctrl-C while flashing (exit code 130)."""
