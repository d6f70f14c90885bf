"""The host side's error tree: one base, one subclass per failure a user must tell apart.

Every message says what failed, the value seen, and what to do next. The CLI's
single ``main()`` turns these into a message on stderr and an exit code.
"""

from __future__ import annotations


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
