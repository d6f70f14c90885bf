"""The releases a server offers, and which one a device gets.

Every subdirectory of the releases directory that holds ``manifest.json``,
``manifest.sig`` and ``payload`` is a release; its id is the subdirectory's
name. :class:`Catalog` rescans when anything there changes, so a release
written with ``mpota release --out RELEASES/<id>`` is offered without a restart.
With a public key, each release is verified as a device would verify it when
it is loaded, and one that fails is skipped with a warning naming the failed
checks: a tampered release is never offered.

Which release a device gets is a :data:`Policy`, a plain function, so roll-out
rules can replace :func:`newest_release` without touching the HTTP layer.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from .. import release
from ..errors import ReleaseError, printable
from .store import Device

log = logging.getLogger("mpota.server")

# Not starting with a dot: '.' and '..' are never ids, and make_release builds a
# release in a hidden '.<id>.*' directory before renaming it into place.
RELEASE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_FILES = (release.MANIFEST, release.SIGNATURE, release.PAYLOAD)


def valid_release_id(text: str) -> bool:
    return RELEASE_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class Release:
    """A loaded release: the exact manifest and signature bytes, and where its payload is."""

    id: str
    directory: Path
    manifest: bytes
    signature: bytes
    fields: Mapping[str, Any]
    payload: Path
    payload_size: int
    expires: dt.datetime | None

    @property
    def board(self) -> str:
        return str(self.fields["board"])

    @property
    def version(self) -> str:
        return str(self.fields["version"])

    @property
    def version_code(self) -> int:
        return int(self.fields["version_code"])

    @property
    def min_version_code(self) -> int:
        """The version_code a device must run to accept this release (0: any)."""
        return int(self.fields.get("min_version_code") or 0)

    def expired(self, now: dt.datetime) -> bool:
        # as on the device: valid up to and including the second it expires
        return self.expires is not None and now > self.expires


@dataclass(frozen=True)
class UpdateQuery:
    """What a device asked: ``board`` is its registered board when it has one."""

    device: Device
    board: str
    version_code: int
    now: dt.datetime


Policy = Callable[[Sequence[Release], UpdateQuery], Release | None]


def newest_release(releases: Sequence[Release], query: UpdateQuery) -> Release | None:
    """The release with the highest version_code for the device's board, newer than its own,
    that the device can install.

    Expired releases are never offered, nor one whose ``min_version_code`` the
    device does not run yet (it would refuse it on every poll): such a device
    gets the newest release it can take, and the next one after installing
    that. Ties (two releases with one version_code) go to the greater id, so
    the answer does not depend on directory order.
    """
    candidates = [r for r in releases if r.board == query.board and not r.expired(query.now)
                  and r.min_version_code <= query.version_code < r.version_code]
    return max(candidates, key=lambda r: (r.version_code, r.id), default=None)


def load_release(directory: Path, public: ec.EllipticCurvePublicKey | None = None) -> Release:
    """Load one release directory; with ``public``, only if every device check passes.

    Raises:
        ReleaseError: Naming what is wrong (the failed checks, with a key).
    """
    if public is not None:
        report = release.verify_release(directory, public)
        if not report.ok:
            failed = [c for c in report.checks if not c.ok]
            raise ReleaseError("failed checks: " + ", ".join(c.name for c in failed) + " ("
                               + "; ".join(c.message for c in failed) + ")")
    raw, sig, payload = release.read_release(directory)
    if len(raw) > release.MAX_MANIFEST:
        raise ReleaseError(f"manifest is {len(raw)} bytes, devices accept {release.MAX_MANIFEST}")
    fields = release.load_manifest(raw)
    problems = release.schema_problems(fields)
    if problems:
        raise ReleaseError("manifest: " + "; ".join(problems))
    if len(sig) != 64:
        raise ReleaseError(f"manifest.sig is {len(sig)} bytes, expected 64 (raw r||s)")
    size = payload.stat().st_size
    if size != fields["payload_size"]:
        raise ReleaseError(f"payload is {size} bytes, manifest says {fields['payload_size']}")
    expires = None
    if fields.get("expires") is not None:
        expires = release.parse_stamp(fields["expires"])  # schema_problems checked it
    return Release(directory.name, directory, raw, sig, fields, payload, size, expires)


_Stamp = tuple[int, int, int]


class Catalog:
    """The releases in a directory, reloaded when the directory or a release changes.

    Args:
        directory: The releases directory.
        public: Verify every release with this key and skip those that fail.
    """

    def __init__(self, directory: Path, public: ec.EllipticCurvePublicKey | None = None) -> None:
        self.directory = directory
        self.public = public
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[tuple[_Stamp, ...], Release | None]] = {}

    def releases(self) -> list[Release]:
        """The releases on offer now, sorted by id."""
        with self._lock:
            self._rescan()
            loaded = [r for _, r in self._seen.values() if r is not None]
        return sorted(loaded, key=lambda r: r.id)

    def get(self, release_id: str) -> Release | None:
        """The release called ``release_id``; None for an unknown or malformed id."""
        if not valid_release_id(release_id):
            return None
        with self._lock:
            self._rescan()
            entry = self._seen.get(release_id)
        return entry[1] if entry else None

    def _rescan(self) -> None:
        # Stat every release's files each time: a payload replaced in place does
        # not change the directory's own mtime. A release is re-read (and
        # re-verified) only when one of its files changed.
        current: dict[str, tuple[_Stamp, ...]] = {}
        try:
            entries = list(os.scandir(self.directory))
        except OSError as e:
            log.warning("cannot read releases directory %s: %s", self.directory, e.strerror)
            entries = []
        for entry in entries:
            if valid_release_id(entry.name) and entry.is_dir():
                stamps = _file_stamps(Path(entry.path))
                if stamps is not None:
                    current[entry.name] = stamps
        for release_id in set(self._seen) - set(current):
            del self._seen[release_id]
        for release_id, stamps in current.items():
            known = self._seen.get(release_id)
            if known is None or known[0] != stamps:
                self._seen[release_id] = (stamps, self._load(release_id))

    def _load(self, release_id: str) -> Release | None:
        directory = self.directory / release_id
        try:
            loaded = load_release(directory, self.public)
        except (ReleaseError, OSError) as e:
            log.warning("release %s skipped (%s): %s", release_id, directory, printable(e))
            return None
        except Exception as e:  # one odd release must never stop the server
            log.warning("release %s skipped (%s): %s: %s", release_id, directory,
                        e.__class__.__name__, printable(e))
            return None
        log.info("release %s loaded: %s version %s (version_code %d)", release_id,
                 loaded.board, loaded.version, loaded.version_code)
        return loaded


def _file_stamps(directory: Path) -> tuple[_Stamp, ...] | None:
    """(mtime, size, inode) of a release's three files; None when it is not (yet) a release."""
    stamps = []
    for name in _FILES:
        try:
            st = (directory / name).stat()
        except OSError:
            return None
        stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)
