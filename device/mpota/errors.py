# One base error for the device agent and one subclass per failure a user
# (or the server reading a report) must tell apart.  Messages say what was
# expected, what was seen, and what to do.


class OTAError(Exception):
    code = "ota-error"
    # True when trying the same thing again later may succeed (a dropped or
    # stalled connection, a 5xx); False for a refusal that will not change.
    retryable = False


class ManifestError(OTAError):
    """The release's manifest was refused; nothing was written."""

    code = "manifest"


class ManifestTooLarge(ManifestError):
    code = "manifest-too-large"


class SignatureError(ManifestError):
    code = "bad-signature"


class UnknownKeyError(ManifestError):
    code = "unknown-key"


class ManifestFormatError(ManifestError):
    code = "bad-manifest"


class BoardMismatch(ManifestError):
    code = "wrong-board"


class ChipMismatch(ManifestError):
    code = "wrong-chip"


class RollbackError(ManifestError):
    """version_code not newer than the running firmware (downgrade)."""

    code = "downgrade"


class SecurityCounterError(ManifestError):
    code = "security-counter"


class ExpiredError(ManifestError):
    code = "expired"


class SlotTooSmall(ManifestError):
    code = "too-large"


class TrustedKeyError(OTAError):
    """A trusted key could not be read from the configuration."""

    code = "bad-key"


class ConfigError(OTAError):
    """The device configuration (mpota.json, NVS credentials) is missing or wrong."""

    code = "config"


class DownloadError(OTAError):
    """A permanent refusal while talking to the server: an HTTP error status,
    a response the agent does not accept (chunked, compressed, wrong range or
    size), a redirect it must not follow.  The update ends FAILED."""

    code = "download"

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class TransportError(DownloadError):
    """The connection failed, dropped or stalled, or the server had a passing
    fault (5xx): retried with backoff, and resumed later when retries run out."""

    code = "transport"
    retryable = True


class TLSError(DownloadError):
    """The server's certificate is not signed by the pinned CA or names another
    host: permanent, never retried (a handshake cut short is a TransportError)."""

    code = "tls"


class ImageError(OTAError):
    """The written image does not match the signed manifest."""

    code = "image"


class StateError(OTAError):
    """The request does not fit the agent's current state."""

    code = "state"


class BusyError(OTAError):
    """The application said it is busy: the agent will not reboot now."""

    code = "busy"


class HealthCheckError(OTAError):
    code = "health"


class DecryptionError(OTAError):
    """An encrypted release cannot be decrypted by this device."""

    code = "decrypt"


class NoDecryptionKey(DecryptionError):
    code = "no-decryption-key"


class NotARecipient(DecryptionError):
    code = "not-a-recipient"


class KeyUnwrapError(DecryptionError):
    code = "key-unwrap"
