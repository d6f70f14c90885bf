# Few classes, one `code` each failure names: a class tells the agent what to
# do (retry, reject the release, refuse the request); the code tells the
# user and the server which failure it was.  Messages stay short on the
# device; the host tools explain codes at length.
#
#   ManifestError codes: manifest-too-large bad-signature unknown-key
#     bad-manifest wrong-board wrong-chip downgrade security-counter expired
#     too-large
#   DecryptionError codes: no-decryption-key not-a-recipient key-unwrap
#   ConfigError codes: config, bad-key (a trusted key cannot be read)


class OTAError(Exception):
    code = "error"
    # True when trying the same thing again later may succeed (a dropped or
    # stalled connection, a 5xx); False for a refusal that will not change.
    retryable = False

    def __init__(self, message, code=None):
        super().__init__(message)
        if code:
            self.code = code


class ManifestError(OTAError):
    # the release's manifest was refused; nothing was written
    code = "bad-manifest"


class ConfigError(OTAError):
    # mpota.json, a key file, the CA file or NVS credentials missing or wrong
    code = "config"


class DownloadError(OTAError):
    # a permanent refusal from or about the server (HTTP error status, a
    # response the agent does not accept, a redirect it must not follow)
    code = "download"

    def __init__(self, message, status=None, code=None):
        super().__init__(message, code)
        self.status = status


class TransportError(DownloadError):
    # dropped, stalled or refused connection, or a 5xx: retried, then resumed
    code = "transport"
    retryable = True


class TLSError(DownloadError):
    # certificate not signed by the pinned CA or for another host: permanent
    code = "tls"


class ImageError(OTAError):
    # the written image does not match the signed manifest
    code = "image"


class StateError(OTAError):
    # the request does not fit the agent's current state
    code = "state"


class BusyError(OTAError):
    # the application is busy, or the policy says not now: no reboot
    code = "busy"


class DecryptionError(OTAError):
    # an encrypted release this device cannot decrypt
    code = "decrypt"
