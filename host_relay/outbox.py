"""A durable outbox for Masakari notifications, in one sqlite file.

A failure counts as *reported* only once :meth:`Outbox.put` has returned: the
row is committed and on disk by then, so a ``kill -9`` (or a crash, or an OOM
kill) of the relay at any later moment cannot lose it.  The sender delivers
rows oldest first and records the outcome on the same row; nothing is ever
deleted before Masakari has accepted it (202, or 409 duplicate).

Durability settings, and why:

- ``journal_mode = WAL``: a commit appends to the write-ahead log, readers never
  block the writer, and a torn write at the tail of the log is detected by its
  checksums and rolled back on the next open, so the file is always consistent.
- ``synchronous = FULL``: the WAL is fsync'ed at every commit.  ``NORMAL`` with
  WAL would already survive ``kill -9`` (a committed transaction is in the OS
  page cache, which outlives the process), but it may lose the last commits on
  a kernel panic or power cut of the compute host.  A put() is rare (one per
  failed instance) and one fsync costs about a millisecond on a local disk, so
  the stronger guarantee is nearly free: a failure we have logged as reported
  is on stable storage.
- ``busy_timeout = 5000``: another process (``iim-relay status``, an operator's
  ``sqlite3``) holding a lock briefly makes us wait instead of failing.

The same file holds each detector's durable record (``detector_state``, one
row per instance, JSON): :meth:`Outbox.commit` writes notifications and the
records that came with them in ONE transaction, so a decision and the state
that remembers it are on disk together or not at all.  Commits run in the
relay's writer thread (host_relay.writer), never on the event loop.

The schema carries a version in ``PRAGMA user_version``; opening a file written
by a newer relay fails with a clear message instead of guessing.  Version 1
files (no records, no tokens) are upgraded in place.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Optional

SCHEMA_VERSION = 2
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"  # what Masakari's generated_time expects, in UTC
STATES = ("queued", "delivered", "dead")
KEEP_DELIVERED = 1000  # delivered rows kept for `status`/debugging; older ones are pruned

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_uuid     TEXT    NOT NULL,
    hostname          TEXT    NOT NULL,
    generated_time    TEXT    NOT NULL,
    kind              TEXT    NOT NULL,
    reason            TEXT    NOT NULL DEFAULT '',
    state             TEXT    NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'delivered', 'dead')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    created_at        REAL    NOT NULL,
    next_attempt_at   REAL    NOT NULL,
    last_status       INTEGER,
    last_error        TEXT    NOT NULL DEFAULT '',
    notification_uuid TEXT,
    finished_at       REAL
);
CREATE INDEX IF NOT EXISTS outbox_queued ON outbox (state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS outbox_instance ON outbox (instance_uuid, id);
"""
# Version 2: a token per notification (the writer's identity for it before it has
# a row id; see host_relay.writer) and the detectors' durable records.
_SCHEMA_2 = """
ALTER TABLE outbox ADD COLUMN token TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS outbox_token ON outbox (token);
CREATE TABLE IF NOT EXISTS detector_state (
    instance_uuid TEXT PRIMARY KEY,
    record        TEXT NOT NULL,
    updated_at    REAL NOT NULL
);
"""


class OutboxError(Exception):
    """The outbox file cannot be used (for example, written by a newer relay)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    id: int
    instance_uuid: str
    hostname: str
    generated_time: str  # UTC, TIME_FORMAT, fixed at put() time
    kind: str
    reason: str
    state: str  # 'queued' | 'delivered' | 'dead'
    attempts: int
    created_at: float  # wall clock (time.time()) of put()
    next_attempt_at: float
    last_status: Optional[int]
    last_error: str
    notification_uuid: Optional[str]
    finished_at: Optional[float] = None  # when it was delivered or dead-lettered
    token: Optional[str] = None  # set by the writer; None for rows of schema 1


@dataclasses.dataclass(frozen=True)
class NewEntry:
    """A notification to insert; ``outcome`` set when it was already sent directly."""

    token: str
    instance_uuid: str
    hostname: str
    kind: str
    reason: str
    created_at: float  # wall clock of the detector's decision
    # (state, last_status, notification_uuid, error, finished_at) when the writer
    # had to send it straight to Masakari before the disk took it.
    outcome: Optional[tuple[str, Optional[int], Optional[str], str, float]] = None

    @property
    def generated_time(self) -> str:
        """As the row will say; the client builds a direct send's body from it."""
        return format_time(self.created_at)


def _token() -> str:
    return uuid.uuid4().hex


def _script(db: sqlite3.Connection, script: str) -> None:
    for stmt in script.split(";"):
        if stmt.strip():
            db.execute(stmt)


def format_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(TIME_FORMAT)


class Outbox:
    """The relay's queue of notifications, safe across crashes and restarts.

    Methods are synchronous and short (one small transaction each); one
    connection is shared under a lock, so calling from the event loop and
    from worker threads is safe.
    """

    def __init__(self, path: str, keep_delivered: int = KEEP_DELIVERED):
        self.path = path
        self._keep_delivered = keep_delivered
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 5000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"{self.path}: cannot use WAL journal mode (got {mode!r})")
        db.execute("PRAGMA synchronous = FULL")
        with self._tx():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"{self.path} has outbox schema version {version}, newer than this "
                    f"relay's {SCHEMA_VERSION}: run the newer iim-relay, or move the file "
                    "away after delivering what it holds"
                )
            if version < 1:
                _script(db, _SCHEMA)
            if version < 2:
                _script(db, _SCHEMA_2)
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    class _Tx:
        def __init__(self, outbox: Outbox):
            self._o = outbox

        def __enter__(self):
            self._o._lock.acquire()
            try:
                self._o._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._o._lock.release()
                raise
            return self._o._db

        def __exit__(self, exc_type, exc, tb):
            try:
                self._o._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self._o._lock.release()
            return False

    def _tx(self) -> Outbox._Tx:
        return Outbox._Tx(self)

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @staticmethod
    def _entry(row: sqlite3.Row) -> Entry:
        return Entry(**{k: row[k] for k in row.keys()})

    # -- writes ---------------------------------------------------------------

    def put(self, instance_uuid: str, hostname: str, kind: str, reason: str, now: float,
            token: Optional[str] = None) -> Entry:
        """Queue a notification; it is committed (fsync'ed) when this returns."""
        new = NewEntry(token or _token(), instance_uuid, hostname, kind, reason, now)
        return self.commit([new], {}, now)[0]

    def commit(self, entries: Iterable[NewEntry],
               records: Mapping[str, Optional[Mapping[str, Any]]], now: float) -> list[Entry]:
        """Insert ``entries`` and upsert ``records`` (None deletes) in ONE transaction.

        Everything is on stable storage when this returns (WAL, synchronous=FULL);
        if it raises, nothing was written.  An entry whose token is already in the
        file (a retried commit that had in fact succeeded) is not inserted twice.
        """
        entries = list(entries)
        with self._tx() as db:
            for e in entries:
                state, status, n_uuid, error, finished = e.outcome or (
                    "queued", None, None, "", None)
                db.execute(
                    "INSERT OR IGNORE INTO outbox (token, instance_uuid, hostname,"
                    " generated_time, kind, reason, state, attempts, created_at,"
                    " next_attempt_at, last_status, last_error, notification_uuid, finished_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.token, e.instance_uuid, e.hostname, format_time(e.created_at), e.kind,
                     e.reason or "", state, 0 if e.outcome is None else 1, e.created_at,
                     e.created_at, status, error, n_uuid, finished),
                )
            for inst, record in records.items():
                if record is None:
                    db.execute("DELETE FROM detector_state WHERE instance_uuid = ?", (inst,))
                else:
                    db.execute(
                        "INSERT INTO detector_state (instance_uuid, record, updated_at)"
                        " VALUES (?, ?, ?) ON CONFLICT (instance_uuid) DO UPDATE SET"
                        " record = excluded.record, updated_at = excluded.updated_at",
                        (inst, json.dumps(record, sort_keys=True), now),
                    )
            rows = [db.execute("SELECT * FROM outbox WHERE token = ?", (e.token,)).fetchone()
                    for e in entries]
        return [self._entry(r) for r in rows]

    def mark_delivered(
        self, entry_id: int, status: int, notification_uuid: Optional[str], now: float
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, last_status = ?,"
                " last_error = '', notification_uuid = ?, finished_at = ?"
                " WHERE id = ? AND state = 'queued'",
                (status, notification_uuid, now, entry_id),
            )
            if self._keep_delivered >= 0:
                db.execute(
                    "DELETE FROM outbox WHERE state = 'delivered' AND id NOT IN"
                    " (SELECT id FROM outbox WHERE state = 'delivered' ORDER BY id DESC LIMIT ?)",
                    (self._keep_delivered,),
                )

    def mark_retry(
        self, entry_id: int, status: Optional[int], error: str, next_attempt_at: float
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_status = ?, last_error = ?,"
                " next_attempt_at = ? WHERE id = ? AND state = 'queued'",
                (status, error or "", next_attempt_at, entry_id),
            )

    def mark_dead(self, entry_id: int, status: int, error: str, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_status = ?,"
                " last_error = ?, finished_at = ? WHERE id = ? AND state = 'queued'",
                (status, error or "", now, entry_id),
            )

    def retry_now(self, now: float) -> int:
        """Make every queued entry due at ``now`` (the API answered again after an outage).

        Returns how many entries were brought forward.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE outbox SET next_attempt_at = ?"
                " WHERE state = 'queued' AND next_attempt_at > ?",
                (now, now),
            )
            return cur.rowcount

    def requeue(self, entry_id: int, now: float) -> bool:
        """Queue a dead-lettered entry again (after the operator fixed the cause)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE outbox SET state = 'queued', next_attempt_at = ?, finished_at = NULL"
                " WHERE id = ? AND state = 'dead'",
                (now, entry_id),
            )
            return cur.rowcount == 1

    # -- reads ----------------------------------------------------------------

    def due(self, now: float, limit: int = 50) -> list[Entry]:
        rows = self._query(
            "SELECT * FROM outbox WHERE state = 'queued' AND next_attempt_at <= ?"
            " ORDER BY id LIMIT ?",
            (now, limit),
        )
        return [self._entry(r) for r in rows]

    def next_due_at(self) -> Optional[float]:
        rows = self._query("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'queued'")
        return rows[0][0]

    def stats(self, now: float) -> dict:
        with self._lock:
            return self.stats_from(self._db, now)

    @staticmethod
    def stats_from(db: sqlite3.Connection, now: float) -> dict:
        """Queue depth and friends, read through ``db`` (any connection to the file)."""
        depth, oldest, dead, delivered, retrying = db.execute(
            "SELECT"
            " SUM(state = 'queued'), MIN(CASE WHEN state = 'queued' THEN created_at END),"
            " SUM(state = 'dead'), SUM(state = 'delivered'),"
            " SUM(state = 'queued' AND attempts > 0)"
            " FROM outbox"
        ).fetchone()
        return {
            "depth": depth or 0,
            "oldest_queued_age": max(0.0, now - oldest) if oldest is not None else 0.0,
            "dead": dead or 0,
            "delivered": delivered or 0,  # rows kept; older delivered rows are pruned
            "retrying": retrying or 0,
        }

    def recent(self, limit: int = 50) -> list[Entry]:
        rows = self._query("SELECT * FROM outbox ORDER BY id DESC LIMIT ?", (limit,))
        return [self._entry(r) for r in rows]

    def dead(self, limit: int = 50) -> list[Entry]:
        """Dead-lettered entries, newest first: what an operator must look at."""
        rows = self._query(
            "SELECT * FROM outbox WHERE state = 'dead' ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [self._entry(r) for r in rows]

    def latest_for(self, instance_uuid: str) -> Optional[Entry]:
        rows = self._query(
            "SELECT * FROM outbox WHERE instance_uuid = ? ORDER BY id DESC LIMIT 1",
            (instance_uuid,),
        )
        return self._entry(rows[0]) if rows else None

    def get(self, entry_id: int) -> Optional[Entry]:
        rows = self._query("SELECT * FROM outbox WHERE id = ?", (entry_id,))
        return self._entry(rows[0]) if rows else None

    def records(self) -> dict[str, dict[str, Any]]:
        """Every stored detector record (JSON as written), by instance uuid.

        A row that is not valid JSON comes back as ``{}``, which the record's
        ``from_json`` rejects: the caller logs it and starts that detector fresh.
        """
        out: dict[str, dict[str, Any]] = {}
        for row in self._query("SELECT instance_uuid, record FROM detector_state"):
            try:
                value = json.loads(row[1])
            except ValueError:
                value = None
            out[row[0]] = value if isinstance(value, dict) else {}
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
