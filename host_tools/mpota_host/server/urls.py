"""Signed payload URLs: the URL itself is the credential for downloading a release.

``/v1/payload/<release>?device=<id>&expires=<unix time>&sig=<hex>`` where
``sig`` is HMAC-SHA256 under the server's URL secret over
``"<release>\\n<device>\\n<expires>"``. A device can resume a download with
Range requests on the same URL without sending its token again, and a leaked
URL names one release for one device and stops working when it expires.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
from pathlib import Path

from ..errors import ServerError
from .store import ensure_private_dir, valid_device_id

SECRET_FILE = "url-secret"
SECRET_SIZE = 32
_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIG = re.compile(r"[0-9a-f]{64}")


def load_secret(data: Path) -> bytes:
    """The URL secret in ``DATA/url-secret``: 32 random bytes, created (mode 0600) on first use."""
    path = data / SECRET_FILE
    if not path.exists():
        ensure_private_dir(data)
        _create_secret(path)
    try:
        secret = path.read_bytes()
    except OSError as e:
        raise ServerError(f"cannot read URL secret {path}: {e.strerror}") from e
    if len(secret) != SECRET_SIZE:
        raise ServerError(f"URL secret {path} is {len(secret)} bytes, expected {SECRET_SIZE}: "
                          "delete it and restart the server (download URLs already handed "
                          "out stop working)")
    return secret


def _create_secret(path: Path) -> None:
    # Written under a temporary name and linked into place: two servers starting
    # at once agree on one secret, and a crash never leaves a short one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(SECRET_SIZE))
        # FileExistsError: another process created it first; everyone uses theirs.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class PayloadUrls:
    """Makes and checks signed payload URLs.

    Args:
        secret: The HMAC key (see :func:`load_secret`).
        ttl: Seconds a URL stays valid after it is made.
    """

    def __init__(self, secret: bytes, ttl: int) -> None:
        self._secret = secret
        self.ttl = ttl

    def _sign(self, release_id: str, device_id: str, expires: str) -> str:
        message = f"{release_id}\n{device_id}\n{expires}".encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def make(self, release_id: str, device_id: str, now: float) -> str:
        """The path and query a device downloads ``release_id`` from until ``now + ttl``."""
        expires = str(int(now) + self.ttl)
        sig = self._sign(release_id, device_id, expires)
        return f"/v1/payload/{release_id}?device={device_id}&expires={expires}&sig={sig}"

    def refusal(self, release_id: str, device_id: str | None, expires: str | None,
                sig: str | None, now: float) -> str | None:
        """Why a payload request is refused, or None when its URL is genuine and current.

        The signature is checked before the expiry, so a forged URL learns nothing
        about which releases or devices exist.
        """
        if device_id is None or expires is None or sig is None:
            return "payload URL needs device, expires and sig: ask /v1/update for a URL"
        if not (valid_device_id(device_id) and _EXPIRES.fullmatch(expires)
                and _SIG.fullmatch(sig)):
            return "payload URL is malformed: ask /v1/update for a new URL"
        if not hmac.compare_digest(self._sign(release_id, device_id, expires), sig):
            return "payload URL signature does not match: ask /v1/update for a new URL"
        if int(expires) < now:
            return f"payload URL expired at {expires}: ask /v1/update for a new URL"
        return None
