"""The update server's state in SQLite: registered devices and every report they send.

A device is known by its id and the SHA-256 of its token; the token itself is
shown once, by :func:`add_device`, and never stored. A :class:`Store` keeps one
connection per thread (the server's event-loop thread reuses its own for every
request; the CLI, ``mpota device list`` while the server runs, has another),
and never shares one between threads; WAL mode lets them read while the server
writes.

Durability: WAL with ``synchronous=NORMAL``. A transaction is in the WAL file
(handed to the operating system) before its commit returns, so a report
acknowledged with 200 survives a crash or kill of the server process; the WAL
is fsynced at each checkpoint, not at each commit, so a power cut or kernel
crash of the server host may lose the last commits (never corrupt the
database). ``synchronous=FULL`` would add an fsync to every report and check
(1-1.5 ms each on the test machine's disk, far more on a busy one) for the
host-crash case only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import board as boards
from ..errors import BoardError, DeviceError, ServerError
from ..release import stamp

DB_NAME = "mpota.db"
DEVICE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
BOARD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
TAG = re.compile(r"[A-Za-z0-9_.:=-]{1,64}")
MAX_TOKEN = 256

# A report's fields: name -> (type, required, maximum length of a string)
REPORT_FIELDS: dict[str, tuple[type, bool, int]] = {
    "state": (str, True, 32),
    "version": (str, False, 64),
    "version_code": (int, False, 0),
    "target_version_code": (int, False, 0),
    "detail": (str, False, 512),
    "offset": (int, False, 0),
}
_INT64 = (-(1 << 63), (1 << 63) - 1)  # what SQLite stores; larger ints would crash the insert

# Compared against when the device id is unknown, so that an unknown id and a
# wrong token take the same time.
_NO_TOKEN = hashlib.sha256(b"no such device").hexdigest()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    board TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    created TEXT NOT NULL,
    last_seen TEXT,
    state TEXT,
    version_code INTEGER,
    reported_board TEXT,
    offered_release TEXT,
    offered_version_code INTEGER,
    offered_at TEXT
);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    time TEXT NOT NULL,
    state TEXT NOT NULL,
    version TEXT,
    version_code INTEGER,
    target_version_code INTEGER,
    detail TEXT,
    "offset" INTEGER
);
CREATE INDEX IF NOT EXISTS reports_by_device ON reports (device, id);
"""
# Columns added after the first release of the schema: (name, SQL type), added
# to an older database when it is opened.
_ADDED_COLUMNS = (("offered_release", "TEXT"), ("offered_version_code", "INTEGER"),
                  ("offered_at", "TEXT"))
OFFERED = "OFFERED"  # the state the server records when it answers a check with an offer


def now_stamp() -> str:
    return stamp(dt.datetime.now(dt.timezone.utc))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def valid_device_id(text: str) -> bool:
    return DEVICE_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class Device:
    """A registered device as the server last saw it.

    ``board`` is the board it was registered with (it decides which releases
    it is offered); ``reported_board`` is what it last said it is. ``state`` is
    the last state it reported, or ``OFFERED`` when the server has since
    answered its check with a release it had not offered it before
    (``offered_release``, ``offered_version_code``, ``offered_at``: the last
    release offered and when it was first offered).
    """

    id: str
    board: str | None
    tags: tuple[str, ...]
    created: str
    last_seen: str | None
    state: str | None
    version_code: int | None
    reported_board: str | None
    offered_release: str | None = None
    offered_version_code: int | None = None
    offered_at: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Device:
        return cls(row["id"], row["board"], tuple(json.loads(row["tags"])), row["created"],
                   row["last_seen"], row["state"], row["version_code"], row["reported_board"],
                   row["offered_release"], row["offered_version_code"], row["offered_at"])

    def as_dict(self) -> dict[str, Any]:
        info = asdict(self)
        info["tags"] = list(self.tags)
        return info


def report_problems(body: Any) -> list[str]:
    """What is wrong with a report's JSON body (empty when nothing is).

    Unknown keys are ignored, so newer devices can send more than this server
    records; ``null`` counts as absent for optional fields.
    """
    if not isinstance(body, dict):
        return [f"report must be a JSON object, not {type(body).__name__}"]
    problems = []
    for name, (kind, required, limit) in REPORT_FIELDS.items():
        value = body.get(name)
        if value is None:
            if required:
                problems.append(f"missing required field {name!r}")
        elif type(value) is not kind:  # bool is not an int here
            problems.append(f"field {name!r} must be {kind.__name__}, not {type(value).__name__}")
        elif isinstance(value, str) and not (1 if required else 0) <= len(value) <= limit:
            problems.append(f"field {name!r} must be at most {limit} characters"
                            f"{' and not empty' if required else ''}, not {len(value)}")
        elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            problems.append(f"field {name!r} = {value} does not fit in 64 bits")
    return problems


class Store:
    """Devices and reports in ``DATA/mpota.db``.

    Args:
        data: The server's data directory.
        create: Create the directory and database when missing; when False, a
            missing database is a :class:`DeviceError` (a mistyped ``--data``
            must not silently show an empty fleet).
    """

    def __init__(self, data: Path, create: bool = True) -> None:
        self.path = data / DB_NAME
        if not self.path.exists():
            if not create:
                raise DeviceError(f"no server database at {self.path}: give the --data directory "
                                  "that 'mpota serve' uses, or add a device first")
            ensure_private_dir(data)
        self._local = threading.local()  # .db: this thread's connection
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            have = {row["name"] for row in db.execute("PRAGMA table_info(devices)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in have:
                    db.execute(f"ALTER TABLE devices ADD COLUMN {name} {kind}")

    def _open(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=10)
                db.execute("PRAGMA synchronous=NORMAL")  # see the module's docstring
            except sqlite3.Error as e:
                raise ServerError(f"cannot open database {self.path}: {e}") from e
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = self._open()
        try:
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        except sqlite3.Error as e:
            self.close()  # the next operation starts on a fresh connection
            raise ServerError(f"database {self.path} failed: {e}; check that the --data "
                              "directory is writable and the disk is not full") from e

    def close(self) -> None:
        """Close this thread's connection (the next operation opens a new one)."""
        db = getattr(self._local, "db", None)
        self._local.db = None
        if db is not None:
            db.close()

    def add_device(self, device_id: str, board: str | None = None, tags: Iterable[str] = (),
                   replace: bool = False) -> str:
        """Register a device and return its new token (shown once, stored only hashed)."""
        tags = tuple(tags)
        _check_device(device_id, board, tags)
        token = secrets.token_urlsafe(24)
        row = (device_id, token_digest(token), board, json.dumps(list(tags)), now_stamp())
        with self._connect() as db:
            if replace:
                db.execute("DELETE FROM devices WHERE id = ?", (device_id,))
            elif db.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone():
                raise DeviceError(f"device {device_id!r} is already registered in {self.path}: "
                                  "choose another id, or replace it (a new token; the old one "
                                  "stops working) with --replace")
            db.execute("INSERT INTO devices (id, token_sha256, board, tags, created) "
                       "VALUES (?, ?, ?, ?, ?)", row)
        return token

    def remove_device(self, device_id: str) -> None:
        """Forget a device: its token stops working at once; its reports are kept."""
        with self._connect() as db:
            gone = db.execute("DELETE FROM devices WHERE id = ?", (device_id,)).rowcount
        if not gone:
            raise DeviceError(f"no device {device_id!r} in {self.path}; "
                              "'mpota device list' shows the registered ones")

    def devices(self) -> list[Device]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM devices ORDER BY id").fetchall()
        return [Device.from_row(r) for r in rows]

    def device(self, device_id: str) -> Device | None:
        if not valid_device_id(device_id):
            return None
        with self._connect() as db:
            row = db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        return Device.from_row(row) if row else None

    def authenticate(self, device_id: str, token: str) -> Device | None:
        """The device when ``token`` is its token; None for any mismatch, alike."""
        row = None
        if valid_device_id(device_id) and 0 < len(token) <= MAX_TOKEN:
            with self._connect() as db:
                row = db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        expected = row["token_sha256"] if row else _NO_TOKEN
        matches = hmac.compare_digest(expected, token_digest(token))
        return Device.from_row(row) if row and matches else None

    def seen(self, device_id: str, board: str, version_code: int,
             offer: tuple[str, int] | None = None) -> None:
        """Note that a device asked for an update, running ``version_code`` on
        ``board``, and, with ``offer`` (release id, its version_code), that it
        was offered that release: a release it was not offered before sets its
        state to ``OFFERED`` (an update in progress; agents since issue 10 send
        no report when a download starts) and ``offered_at``; offering the same
        one again (a resume, or a device that refuses it) changes neither."""
        when = now_stamp()
        with self._connect() as db:
            db.execute("UPDATE devices SET last_seen = ?, reported_board = ?, version_code = ? "
                       "WHERE id = ?", (when, board, version_code, device_id))
            if offer is not None:
                release_id, target = offer
                db.execute("UPDATE devices SET state = ?, offered_release = ?, "
                           "offered_version_code = ?, offered_at = ? WHERE id = ? AND "
                           "(offered_release IS NULL OR offered_release != ? OR "
                           "offered_version_code IS NOT ?)",
                           (OFFERED, release_id, target, when, device_id, release_id, target))

    def record_report(self, device_id: str, report: Mapping[str, Any]) -> None:
        """Keep a report (checked with :func:`report_problems`) and update the device row."""
        when = now_stamp()
        values = [report.get(name) for name in REPORT_FIELDS]
        with self._connect() as db:
            db.execute('INSERT INTO reports (device, time, state, version, version_code, '
                       'target_version_code, detail, "offset") VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                       (device_id, when, *values))
            db.execute("UPDATE devices SET last_seen = ?, state = ?, "
                       "version_code = COALESCE(?, version_code) WHERE id = ?",
                       (when, report["state"], report.get("version_code"), device_id))

    def reports(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """Every report, oldest first, optionally of one device."""
        query = "SELECT * FROM reports"
        args: tuple[str, ...] = ()
        if device_id is not None:
            query, args = query + " WHERE device = ?", (device_id,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [dict(r) for r in rows]


def _check_device(device_id: str, board: str | None, tags: tuple[str, ...]) -> None:
    if not valid_device_id(device_id):
        raise DeviceError(f"device id {device_id!r} is not 1-64 characters of "
                          "A-Z a-z 0-9 _ . -: choose another id")
    if board is not None and not BOARD_NAME.fullmatch(board):
        raise DeviceError(f"board {board!r} is not 1-32 characters of A-Z a-z 0-9 _ . -: "
                          "give the board name releases are built for (e.g. esp32-generic-4mb)")
    if board is not None:
        try:
            boards.require(board)
        except BoardError as e:
            raise DeviceError(f"--board: {e}") from None
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise DeviceError(f"tag {tag!r} is not 1-64 characters of A-Z a-z 0-9 _ . : = -")


def add_device(data: Path, device_id: str, board: str | None = None, tags: Iterable[str] = (),
               replace: bool = False) -> str:
    """Register ``device_id`` in the server data directory and return its token.

    Args:
        data: The server's data directory (created when missing).
        device_id: 1-64 characters of ``A-Za-z0-9_.-``.
        board: When given, the device is offered releases for this board only,
            whatever board it reports.
        tags: Labels for later roll-out rules (``A-Za-z0-9_.:=-``).
        replace: Replace an existing registration (issuing a new token)
            instead of refusing it.

    Returns:
        The device's bearer token. Only its SHA-256 is stored: it cannot be shown again.

    Raises:
        DeviceError: The id, board or a tag is malformed, or the id is taken.
    """
    store = Store(data)
    try:
        return store.add_device(device_id, board, tags, replace)
    finally:
        store.close()


def remove_device(data: Path, device_id: str) -> None:
    """Unregister ``device_id``; raises :class:`DeviceError` when it is not registered."""
    store = Store(data, create=False)
    try:
        store.remove_device(device_id)
    finally:
        store.close()


def list_devices(data: Path) -> list[dict[str, Any]]:
    """Registered devices as dicts (no token hashes), sorted by id."""
    store = Store(data, create=False)
    try:
        return [d.as_dict() for d in store.devices()]
    finally:
        store.close()


def reports(data: Path, device_id: str | None = None) -> list[dict[str, Any]]:
    """Every report the server recorded, oldest first, optionally of one device.

    Each is a dict with ``id``, ``device``, ``time`` (server UTC), ``state``,
    ``version``, ``version_code``, ``target_version_code``, ``detail`` and
    ``offset`` (None where the device did not send the field).
    """
    store = Store(data, create=False)
    try:
        return store.reports(device_id)
    finally:
        store.close()


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` readable by its owner only when missing (it holds secrets)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ServerError(f"cannot create data directory {path}: {e.strerror}") from e
    if not os.access(path, os.W_OK):
        raise ServerError(f"data directory {path} is not writable: give another --data")
