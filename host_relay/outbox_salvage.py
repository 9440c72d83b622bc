"""Reading what is left of a damaged outbox, and carrying it into a fresh one.

Nothing here writes to the damaged file: every reading works on a copy in a
temporary directory next to it, and then the file is renamed aside
(:func:`move_aside`; :func:`put_back` undoes that if no new outbox can be made,
so the next start salvages it again).  The copy is repaired where sqlite needs it to open the
file at all: the fixed fields of the 100-byte header, the page count in the
header after a truncation, and page 1 (the schema) when it is garbage, taken
from a fresh outbox of this relay's schema.  Then sqlite itself reads, each pass
until the first damaged page: rows in id order, in reverse order, through each
index, and every id in the gap the passes left (bounded), one by one.  So a bad
page loses only the rows stored in it.  sqlite only follows the live b-trees:
freed pages, which may hold old versions of rows, are never read, so no
notification that Masakari already accepted comes back as pending.

The ``sqlite3`` command's ``.recover`` is not used: in Debian 12's sqlite3
package (3.40.1) it fails with "SQL logic error" even on an intact file, since
that build has no ``sqlite_dbpage`` virtual table, and a raw page scan would
also read freed pages.

A row is carried over only if it is a whole outbox row (every column, sane
types, a known state).  When two passes disagree about a row, the more
advanced state wins (delivered, then dead, then queued).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
from typing import Any, Optional

LOG = logging.getLogger(__name__)

MAGIC = b"SQLite format 3\x00"
SUFFIXES = ("", "-wal", "-shm")
MAX_PROBES = 100_000  # ids looked up one by one in the gap the passes left
COLUMNS = ("id", "instance_uuid", "hostname", "generated_time", "kind", "reason", "state",
           "attempts", "created_at", "next_attempt_at", "last_status", "last_error",
           "notification_uuid", "finished_at")
_RANK = {"queued": 0, "dead": 1, "delivered": 2}
_UUID_RE = re.compile(r"^[0-9a-fA-F-]{32,36}$")
_SCHEMA_TEXT = b"CREATE TABLE outbox"
_PASSES = (
    "SELECT {cols} FROM outbox ORDER BY id",
    "SELECT {cols} FROM outbox ORDER BY id DESC",
    "SELECT {cols} FROM outbox INDEXED BY outbox_queued WHERE state IN ('queued', 'dead')",
    "SELECT {cols} FROM outbox INDEXED BY outbox_instance WHERE instance_uuid > ''",
)


@dataclasses.dataclass
class Found:
    rows: dict[int, dict[str, Any]]  # by id: whole, valid outbox rows
    how: str  # which readers found something
    skipped: int = 0  # rows that were read but are not whole outbox rows


def head(path: str, size: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def looks_like_outbox(path: str) -> bool:
    """True if ``path`` is a (damaged) sqlite file of ours, not some other file.

    The sqlite magic, or the fixed header bytes 21-23 (64, 32, 32), or the
    outbox's schema text in the first pages: any one is enough.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024)
    except OSError:
        return False
    return (data.startswith(MAGIC) or data[21:24] == b"\x40\x20\x20"
            or _SCHEMA_TEXT in data)


def move_aside(path: str, now: float) -> str:
    """Rename ``path`` (and its -wal, -shm) to ``<path>.corrupt-<UTC time>``; returns that name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    kept = f"{path}.corrupt-{stamp}"
    n = 1
    while any(os.path.lexists(kept + s) for s in SUFFIXES):
        n += 1
        kept = f"{path}.corrupt-{stamp}-{n}"
    for suffix in SUFFIXES:
        if os.path.lexists(path + suffix):
            os.rename(path + suffix, kept + suffix)
    _fsync_dir(os.path.dirname(path) or ".")
    return kept


def put_back(kept: str, path: str) -> None:
    """Undo :func:`move_aside`: drop the new outbox files at ``path``, rename ``kept`` back."""
    for suffix in SUFFIXES:
        if os.path.lexists(path + suffix):
            os.unlink(path + suffix)  # the new, incomplete outbox made after the move
    for suffix in SUFFIXES:
        if os.path.lexists(kept + suffix):
            os.rename(kept + suffix, path + suffix)
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(damaged: str) -> Found:
    """Whatever whole outbox rows can still be read from the file ``damaged``, left untouched.

    Raises OSError or sqlite3.Error if no copy can be made to read (no space).
    """
    with tempfile.TemporaryDirectory(prefix=".salvage-",
                                     dir=os.path.dirname(damaged) or ".") as tmp:
        copy = os.path.join(tmp, "copy.sqlite")
        for suffix in ("", "-wal"):  # -shm is rebuilt from the WAL
            if os.path.exists(damaged + suffix):
                shutil.copyfile(damaged + suffix, copy + suffix)
        repairs = _repair_header(copy)
        if not _schema_readable(copy) and _replace_page_one(copy, tmp):
            repairs.append("page 1 from a fresh outbox")
        try:
            rows, skipped = _read(copy)
        except sqlite3.Error as exc:
            LOG.info("Outbox salvage: sqlite cannot read the copy: %s", exc)
            rows, skipped = {}, 0
    how = f"sqlite on a copy{' with ' + ', '.join(repairs) + ' repaired' if repairs else ''}"
    return Found(rows, how, skipped)


def _repair_header(copy: str) -> list[str]:
    """Give the copy back the header fields sqlite needs to open it; what was repaired."""
    repairs = []
    with open(copy, "r+b") as f:
        header = bytearray(f.read(100))
        if len(header) < 100:
            return repairs
        fixed = bytearray(header)
        fixed[0:16] = MAGIC
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):
            page_size = 4096  # sqlite's default, what the outbox uses
            fixed[16:18] = page_size.to_bytes(2, "big")
        if fixed[18] not in (1, 2) or fixed[19] not in (1, 2):
            fixed[18:20] = b"\x02\x02"  # the outbox always runs in WAL mode
        fixed[21:24] = b"\x40\x20\x20"
        if fixed[:28] != header[:28]:
            repairs.append("header")
        pages = os.fstat(f.fileno()).st_size // page_size
        if int.from_bytes(header[28:32], "big") > pages:  # truncated: count what is there
            fixed[28:32] = pages.to_bytes(4, "big")
            repairs.append("page count")
        if fixed != header:
            f.seek(0)
            f.write(fixed)
    return repairs


def _schema_readable(copy: str) -> bool:
    db = sqlite3.connect(copy)
    try:
        return bool(db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox'")
                    .fetchall())
    except sqlite3.DatabaseError:
        return False
    finally:
        db.close()


def _replace_page_one(copy: str, tmp: str) -> bool:
    """Put page 1 of a fresh outbox (same schema, same root pages) in place of a garbage one."""
    from host_relay.outbox import Outbox

    fresh = os.path.join(tmp, "fresh.sqlite")
    Outbox(fresh).close()
    with open(copy, "r+b") as f, open(fresh, "rb") as g:
        header = f.read(100)
        page_size = int.from_bytes(g.read(100)[16:18], "big")
        if int.from_bytes(header[16:18], "big") != page_size:
            return False
        g.seek(0)
        page = bytearray(g.read(page_size))
        pages = os.fstat(f.fileno()).st_size // page_size
        page[28:32] = pages.to_bytes(4, "big")
        f.seek(0)
        f.write(page)
    return _schema_readable(copy)


def _read(copy: str) -> tuple[dict[int, dict[str, Any]], int]:
    db = sqlite3.connect(copy, isolation_level=None)
    try:
        db.execute("PRAGMA query_only = ON")
        db.execute("PRAGMA cell_size_check = ON")
        rows: dict[int, dict[str, Any]] = {}
        bad: set[tuple] = set()
        cols = ", ".join(COLUMNS)

        def take(row: tuple) -> None:
            item = dict(zip(COLUMNS, row))
            if _valid(item):
                _merge(rows, item)
            else:
                bad.add(row)

        for sql in _PASSES:
            try:
                for row in db.execute(sql.format(cols=cols)):
                    take(row)
            except sqlite3.DatabaseError:
                continue  # this pass ends at the first damaged page; the next reads on
        for entry_id in _gap(db, rows):
            try:
                row = db.execute(f"SELECT {cols} FROM outbox WHERE id = ?",  # noqa: S608
                                 (entry_id,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if row is not None:
                take(row)
        return rows, len(bad)
    finally:
        db.close()


def _gap(db: sqlite3.Connection, rows: dict[int, dict[str, Any]]) -> list[int]:
    """Ids not read yet, up to the highest id ever given out, nearest the damage first."""
    top = max(rows, default=0)
    try:
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        top = max(top, int(seq[0])) if seq else top
    except (sqlite3.DatabaseError, TypeError, ValueError):
        pass
    low = min(rows, default=1)
    ids = [i for i in range(low, top + 1) if i not in rows]
    return ids[:MAX_PROBES]


def _valid(row: dict[str, Any]) -> bool:
    return (
        set(row) == set(COLUMNS)
        and isinstance(row["id"], int) and row["id"] > 0
        and isinstance(row["instance_uuid"], str) and bool(_UUID_RE.match(row["instance_uuid"]))
        and all(isinstance(row[k], str) for k in ("hostname", "generated_time", "kind",
                                                   "reason", "last_error"))
        and row["state"] in _RANK
        and isinstance(row["attempts"], int)
        and all(isinstance(row[k], (int, float)) for k in ("created_at", "next_attempt_at"))
        and (row["last_status"] is None or isinstance(row["last_status"], int))
        and (row["notification_uuid"] is None or isinstance(row["notification_uuid"], str))
        and (row["finished_at"] is None or isinstance(row["finished_at"], (int, float)))
    )


def _merge(rows: dict[int, dict[str, Any]], row: dict[str, Any]) -> None:
    old: Optional[dict[str, Any]] = rows.get(row["id"])
    if old is None or _RANK[row["state"]] > _RANK[old["state"]]:
        rows[row["id"]] = row


def carry_over(path: str, found: Found, now: float) -> dict[str, int]:
    """Insert the pending and dead rows into the fresh outbox at ``path``; counts by state."""
    counts = {"queued": 0, "dead": 0, "delivered": 0, "invalid": 0}
    db = sqlite3.connect(path, isolation_level=None)
    try:
        have = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        cols = [c for c in COLUMNS if c in have]
        db.execute("BEGIN IMMEDIATE")
        for entry_id in sorted(found.rows):
            row = dict(found.rows[entry_id])
            if row["state"] == "delivered":
                counts["delivered"] += 1
                continue
            if row["state"] == "queued":
                row["next_attempt_at"] = min(row["next_attempt_at"], now)  # send at once
            try:
                db.execute(f"INSERT INTO outbox ({', '.join(cols)}) "  # noqa: S608
                           f"VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols])
            except sqlite3.IntegrityError:
                counts["invalid"] += 1
                continue
            counts[row["state"]] += 1
        db.execute("COMMIT")
    finally:
        db.close()
    return counts
