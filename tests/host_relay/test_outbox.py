"""The sqlite outbox: durability settings, transitions, persistence, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from host_relay.outbox import (
    SCHEMA_VERSION,
    Entry,
    NewEntry,
    Outbox,
    OutboxError,
    format_time,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0  # a fixed wall-clock time for deterministic tests
OLD_SCHEMA_1 = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, instance_uuid TEXT NOT NULL,
    hostname TEXT NOT NULL, generated_time TEXT NOT NULL, kind TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL, last_status INTEGER, last_error TEXT NOT NULL DEFAULT '',
    notification_uuid TEXT, finished_at REAL);
"""


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(str(tmp_path / "outbox.sqlite"))
    yield ob
    ob.close()


def put(ob: Outbox, n: int = 1, now: float = T0, host: str = "compute-1") -> list[Entry]:
    return [ob.put(f"00000000-0000-4000-8000-{i:012d}", host, "process", f"sshd died {i}", now)
            for i in range(n)]


def test_schema_and_durability_pragmas(outbox, tmp_path):
    db = outbox._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert (tmp_path / "outbox.sqlite-wal").exists()


def test_put_returns_a_queued_entry_due_now(outbox):
    (e,) = put(outbox, now=T0 + 0.25)
    assert e.state == "queued" and e.attempts == 0
    assert e.instance_uuid == "00000000-0000-4000-8000-000000000000"
    assert e.hostname == "compute-1" and e.kind == "process" and e.reason == "sshd died 0"
    assert e.created_at == e.next_attempt_at == T0 + 0.25
    assert e.generated_time == "2027-01-15T08:00:00.250000"  # UTC, masakari's format
    assert e.generated_time == format_time(T0 + 0.25)
    assert e.last_status is None and e.last_error == "" and e.notification_uuid is None
    assert outbox.due(T0 + 0.25) == [e]
    assert outbox.due(T0) == []  # not due before it was put
    assert outbox.next_due_at() == T0 + 0.25


def test_commit_writes_entries_and_records_in_one_transaction(outbox):
    new = NewEntry("tok-1", "u-1", "compute-1", "process_failure", "sshd", T0)
    (e,) = outbox.commit([new], {"u-1": {"v": 1, "armed": True}}, T0)
    assert (e.token, e.state, e.instance_uuid) == ("tok-1", "queued", "u-1")
    assert outbox.records() == {"u-1": {"v": 1, "armed": True}}
    # a retried commit that had in fact succeeded inserts nothing twice
    (again,) = outbox.commit([new], {"u-1": {"v": 1, "armed": False}}, T0 + 1)
    assert again.id == e.id and outbox.stats(T0)["depth"] == 1
    assert outbox.records()["u-1"] == {"v": 1, "armed": False}
    outbox.commit([], {"u-1": None}, T0 + 2)  # None forgets the record
    assert outbox.records() == {}


def test_commit_that_fails_writes_nothing(outbox):
    bad = NewEntry("tok-2", "u-2", "compute-1", "process_failure", "x", T0)
    with pytest.raises(TypeError):
        # the record is not JSON-able: json.dumps raises inside the transaction
        outbox.commit([bad], {"u-2": {"v": object()}}, T0)
    assert outbox.stats(T0)["depth"] == 0 and outbox.records() == {}


def test_entry_sent_before_it_was_written_is_stored_as_delivered(outbox):
    new = NewEntry("tok-3", "u-3", "compute-1", "guest_hang", "silent", T0,
                   outcome=("delivered", 202, "n-uuid", "", T0 + 5))
    (e,) = outbox.commit([new], {}, T0 + 6)
    assert (e.state, e.last_status, e.notification_uuid, e.attempts) == (
        "delivered", 202, "n-uuid", 1)
    assert outbox.due(T0 + 100) == []


def test_schema_1_file_is_upgraded_in_place(tmp_path):
    path = str(tmp_path / "v1.sqlite")
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA_1 + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO outbox (instance_uuid, hostname, generated_time, kind,"
               " created_at, next_attempt_at) VALUES ('u', 'h', 't', 'process', 1, 1)")
    db.commit()
    db.close()
    with Outbox(path) as ob:
        (old,) = ob.due(10)
        assert old.token is None and old.instance_uuid == "u"
        assert ob.records() == {}
        ob.commit([], {"u": {"v": 1}}, 2)
        assert ob._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_due_is_oldest_first_and_limited(outbox):
    entries = put(outbox, 5)
    assert [e.id for e in outbox.due(T0)] == [e.id for e in entries]
    assert [e.id for e in outbox.due(T0, limit=2)] == [entries[0].id, entries[1].id]


def test_retry_postpones_and_counts_attempts(outbox):
    a, b = put(outbox, 2)
    outbox.mark_retry(a.id, 503, "service unavailable", T0 + 10)
    assert [e.id for e in outbox.due(T0 + 5)] == [b.id]
    assert outbox.next_due_at() == T0
    outbox.mark_retry(b.id, None, "connection refused", T0 + 4)
    assert outbox.next_due_at() == T0 + 4
    a2 = outbox.get(a.id)
    assert (a2.state, a2.attempts, a2.last_status, a2.last_error) == (
        "queued", 1, 503, "service unavailable")
    assert [e.id for e in outbox.due(T0 + 10)] == [a.id, b.id]  # oldest first again
    assert outbox.retry_now(T0 + 1) == 2
    assert [e.id for e in outbox.due(T0 + 1)] == [a.id, b.id]


def test_delivered_and_dead_leave_the_queue(outbox):
    a, b, c = put(outbox, 3)
    outbox.mark_retry(a.id, None, "refused", T0 + 1)
    outbox.mark_delivered(a.id, 202, "nuuid", T0 + 2)
    outbox.mark_dead(b.id, 400, "host compute-1 is not registered", T0 + 3)
    a2, b2 = outbox.get(a.id), outbox.get(b.id)
    assert (a2.state, a2.attempts, a2.last_status, a2.notification_uuid, a2.last_error) == (
        "delivered", 2, 202, "nuuid", "")
    assert a2.finished_at == T0 + 2
    assert (b2.state, b2.attempts, b2.last_status) == ("dead", 1, 400)
    assert "not registered" in b2.last_error
    assert [e.id for e in outbox.due(T0 + 100)] == [c.id]
    assert outbox.stats(T0 + 7) == {
        "depth": 1, "oldest_queued_age": 7.0, "dead": 1, "delivered": 1, "retrying": 0}
    # A finished entry is not moved by a late or repeated mark.
    outbox.mark_retry(a.id, 500, "late", T0 + 50)
    outbox.mark_delivered(b.id, 202, None, T0 + 50)
    assert outbox.get(a.id).state == "delivered" and outbox.get(b.id).state == "dead"


def test_requeue_a_dead_entry(outbox):
    (a,) = put(outbox)
    outbox.mark_dead(a.id, 409, "maintenance", T0)
    assert outbox.next_due_at() is None
    assert outbox.requeue(a.id, T0 + 9)
    assert [e.id for e in outbox.due(T0 + 9)] == [a.id]
    assert not outbox.requeue(a.id, T0 + 9)  # only dead entries


def test_stats_recent_latest_for(outbox):
    assert outbox.stats(T0) == {
        "depth": 0, "oldest_queued_age": 0.0, "dead": 0, "delivered": 0, "retrying": 0}
    assert outbox.recent() == [] and outbox.latest_for("x") is None
    first = outbox.put("inst-a", "h", "heartbeat", "silent 10 s", T0)
    outbox.put("inst-b", "h", "process", "x", T0 + 1)
    last = outbox.put("inst-a", "h", "process", "y", T0 + 2)
    outbox.mark_retry(first.id, None, "refused", T0 + 5)
    assert [e.id for e in outbox.recent(2)] == [last.id, last.id - 1]
    assert outbox.latest_for("inst-a").id == last.id
    s = outbox.stats(T0 + 10)
    assert s["depth"] == 3 and s["oldest_queued_age"] == 10.0 and s["retrying"] == 1


def test_delivered_rows_are_pruned_but_queued_and_dead_kept(tmp_path):
    ob = Outbox(str(tmp_path / "o.sqlite"), keep_delivered=2)
    try:
        entries = put(ob, 6)
        ob.mark_dead(entries[0].id, 400, "x", T0)
        for e in entries[1:5]:
            ob.mark_delivered(e.id, 202, None, T0)
        s = ob.stats(T0)
        assert (s["delivered"], s["dead"], s["depth"]) == (2, 1, 1)
        assert ob.get(entries[0].id).state == "dead"
        assert ob.get(entries[5].id).state == "queued"
    finally:
        ob.close()


def test_persists_across_reopen(tmp_path):
    path = str(tmp_path / "o.sqlite")
    ob = Outbox(path)
    a, b, c = put(ob, 3)
    ob.mark_retry(a.id, 503, "down", T0 + 30)
    ob.mark_delivered(b.id, 202, "n-b", T0 + 1)
    ob.close()
    ob = Outbox(path)
    try:
        assert ob.get(a.id) == Entry(**{**a.__dict__, "attempts": 1, "last_status": 503,
                                        "last_error": "down", "next_attempt_at": T0 + 30})
        assert ob.get(b.id).state == "delivered" and ob.get(b.id).notification_uuid == "n-b"
        assert ob.get(c.id) == c
        assert [e.id for e in ob.due(T0 + 1)] == [c.id]
        d = ob.put("new", "h", "k", "r", T0 + 2)
        assert d.id > c.id  # ids are never reused (AUTOINCREMENT)
    finally:
        ob.close()


def test_refuses_a_newer_schema(tmp_path):
    path = str(tmp_path / "o.sqlite")
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(OutboxError, match="newer than this relay"):
        Outbox(path)


def test_another_connection_sees_commits_immediately(outbox):
    """A status reader (another process) sees a put() as soon as it returns."""
    (e,) = put(outbox)
    with sqlite3.connect(outbox.path) as other:
        row = other.execute("SELECT state FROM outbox WHERE id = ?", (e.id,)).fetchone()
    assert row == ("queued",)


_WRITER = textwrap.dedent("""
    import sys, time
    from host_relay.outbox import Outbox
    ob = Outbox(sys.argv[1])
    i = 0
    while True:
        e = ob.put("00000000-0000-4000-8000-%012d" % i, "compute-1", "process", "r", time.time())
        print(e.id, flush=True)  # reported: only now does the parent count it
        i += 1
""")


def test_every_reported_put_survives_sigkill_of_the_writer(tmp_path):
    """kill -9 at an arbitrary moment of a put() loop: every id printed is on disk."""
    path = str(tmp_path / "o.sqlite")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, path], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    reported = []
    deadline = time.monotonic() + 30
    try:
        while len(reported) < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            reported.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)  # mid-loop: probably inside the next put()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) == 200, "the writer did not report 200 puts in 30 s"
    ob = Outbox(path)
    try:
        assert ob._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = {e.id for e in ob.due(time.time() + 1, limit=100_000)}
        assert set(reported) <= ids
        assert all(e.state == "queued" for e in ob.recent(5))
    finally:
        ob.close()
