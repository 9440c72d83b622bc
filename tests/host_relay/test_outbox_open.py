"""The outbox at start-up: errors the operator must fix exit 2 with file, cause and fix; a
damaged outbox is kept aside, what it still holds is carried over, and the relay starts.

Every fault is made for real: a tmpfs remounted read-only, a directory the relay's
(unprivileged) user may not write, a path through a regular file, a text file where the
outbox should be, and outbox files whose header, tail or pages are overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
import time
import uuid as uuidlib

import pytest

from host_relay import control
from host_relay.outbox import Outbox
from host_relay.outbox_open import OutboxStartError, open_outbox
from tests.host_relay.relay_testing import short_dir

ROWS = 300  # about 36 pages of 4 KiB: a damaged page in the middle loses some rows, not all
NOW = 5000.0


@pytest.fixture
def state_dir():
    yield from short_dir()


def fill(path: str, rows: int = ROWS) -> dict[int, dict]:
    """An outbox with queued, dead and delivered rows; the rows as written, by id."""
    with Outbox(path) as ob:
        for i in range(rows):
            e = ob.put(str(uuidlib.UUID(int=i + 1)), "compute-1", "process_failure",
                       f"check {i} failed " + "x" * 200, 1000.0 + i)
            if i % 3 == 1:
                ob.mark_dead(e.id, 400, "host not in a segment", 2000.0 + i)
            elif i % 3 == 2:
                ob.mark_delivered(e.id, 202, str(uuidlib.UUID(int=10_000 + i)), 2000.0 + i)
        return {e.id: e for e in ob.recent(rows)}


def damage(path: str, kind: str) -> bytes:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if kind == "header":
            f.write(b"\0" * 100)
        elif kind == "magic":
            f.write(b"garbage garbage!")
        elif kind == "truncated":
            f.truncate(size // 2)
        elif kind == "pages":
            f.seek(4096 * 8)
            f.write(os.urandom(4096 * 2))
        elif kind == "page1":
            f.seek(100)
            f.write(os.urandom(4096 - 100))
    with open(path, "rb") as f:
        return f.read()


def rows_of(ob: Outbox) -> dict[int, object]:
    return {e.id: e for e in ob.recent(10 * ROWS)}


@pytest.mark.parametrize("kind,all_back", [
    ("header", True), ("magic", True), ("page1", True), ("truncated", False), ("pages", False),
])
def test_damaged_outbox_is_kept_aside_and_what_it_holds_is_carried_over(
        tmp_path, caplog, kind, all_back) -> None:
    path = str(tmp_path / "outbox.sqlite")
    written = fill(path)
    damaged = damage(path, kind)
    with caplog.at_level(logging.INFO, logger="host_relay"):
        ob = open_outbox(str(tmp_path), path, wall_clock=lambda: NOW)
    try:
        got = rows_of(ob)
        assert ob._db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    finally:
        ob.close()
    kept = [n for n in os.listdir(tmp_path) if n.startswith("outbox.sqlite.corrupt-")
            and not n.endswith(("-wal", "-shm"))]
    assert len(kept) == 1, os.listdir(tmp_path)
    with open(tmp_path / kept[0], "rb") as f:  # kept byte for byte, never "fixed" in place
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(damaged).digest()

    wanted = {i: e for i, e in written.items() if e.state in ("queued", "dead")}
    assert got and set(got) <= set(wanted)  # nothing made up, nothing delivered comes back
    for i, entry in got.items():
        original = wanted[i]
        if original.state == "queued":  # due at once after the salvage
            assert entry == original.__class__(**{**vars(original), "next_attempt_at":
                                                  min(original.next_attempt_at, NOW)})
        else:
            assert entry == original
    if all_back:
        assert set(got) == set(wanted)
    else:
        assert len(got) < len(wanted)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    queued = sum(e.state == "queued" for e in got.values())
    dead = sum(e.state == "dead" for e in got.values())
    assert f"kept as {tmp_path / kept[0]}" in message
    assert f"Recovered {queued} pending and {dead} dead-lettered" in message, message


def test_clean_and_new_outboxes_open_without_salvage(tmp_path, caplog) -> None:
    path = str(tmp_path / "state" / "outbox.sqlite")
    with caplog.at_level(logging.INFO, logger="host_relay"):
        open_outbox(str(tmp_path / "state"), path).close()  # created, with its directory
        written = fill(path, 5)
        ob = open_outbox(str(tmp_path / "state"), path)
    assert rows_of(ob) == written
    ob.close()
    assert sorted(os.listdir(tmp_path / "state")) == ["outbox.sqlite"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_file_that_is_no_outbox_is_a_start_error_and_stays_untouched(tmp_path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_text("these are my notes, not a database\n" * 50)
    with pytest.raises(OutboxStartError) as info:
        open_outbox(str(tmp_path), str(path))
    assert "not an iim outbox" in str(info.value) and "move the file away" in info.value.fix
    assert path.read_text().startswith("these are my notes")
    assert sorted(os.listdir(tmp_path)) == ["outbox.sqlite"]


# -- the real command: exit 2 with the file, the cause and the fix ----------------------------

def write_conf(tmp_path, state_path: str) -> str:
    conf = tmp_path / "relay.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_path = {state_path}\nhost = compute-ob\nshutdown_grace = 2\n"
        f"[channels]\nsocket_dir = {state_path}/ch\n"
        "[libvirt]\nconnection_uri =\n"
        "[masakari]\nauth_type = none\nendpoint = http://127.0.0.1:9\n")
    os.chmod(conf, 0o644)
    return str(conf)


def run_relay(conf: str, without_dac_override: bool = False) -> subprocess.CompletedProcess:
    # Root without CAP_DAC_OVERRIDE obeys file modes like any user, and can still run this
    # interpreter (which may live under root's home).
    prefix = (["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               "--inh-caps=-dac_override,-dac_read_search"] if without_dac_override else [])
    return subprocess.run([*prefix, sys.executable, "-m", "host_relay.cli", "run",
                           "--config-file", conf], capture_output=True, text=True, timeout=60)


def assert_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("iim-relay: outbox ")]
    assert len(line) == 1, out
    for needle in needles + ("fix: ",):
        assert needle in line[0], line[0]
    return line[0]


@pytest.fixture
def read_only_tmpfs(state_dir):
    mnt = os.path.join(state_dir, "ro")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


def test_run_on_a_read_only_file_system_exits_2(tmp_path, read_only_tmpfs) -> None:
    state = os.path.join(read_only_tmpfs, "state")
    os.mkdir(state)
    outbox = os.path.join(state, "outbox.sqlite")
    fill(outbox, 3)  # an intact outbox the relay could read but not write
    subprocess.run(["mount", "-o", "remount,ro", read_only_tmpfs], check=True)
    line = assert_exit_2(run_relay(write_conf(tmp_path, state)), outbox,
                         "read-only file system", "remount it read-write")
    assert state in line
    # Under a missing state directory on that file system: the same, about the parent.
    assert_exit_2(run_relay(write_conf(tmp_path, state + "/new")), "read-only file system")


def test_run_without_write_permission_on_the_directory_exits_2(tmp_path, state_dir) -> None:
    state = os.path.join(state_dir, "not-ours")
    os.mkdir(state, 0o755)
    os.chown(state, 65534, 65534)  # nobody's; the relay (root without DAC override) may not write
    line = assert_exit_2(run_relay(write_conf(tmp_path, state), without_dac_override=True),
                         os.path.join(state, "outbox.sqlite"), "may not write to", state)
    assert "uid 0" in line and "give the relay's user write access" in line
    assert os.listdir(state) == []


def test_run_with_a_state_path_through_a_file_exits_2(tmp_path, state_dir) -> None:
    blocker = os.path.join(state_dir, "not-a-dir")
    with open(blocker, "w") as f:
        f.write("x")
    assert_exit_2(run_relay(write_conf(tmp_path, os.path.join(blocker, "state"))),
                  "is a file, not a directory")


def test_run_with_a_file_that_is_no_database_exits_2(tmp_path, state_dir) -> None:
    with open(os.path.join(state_dir, "outbox.sqlite"), "w") as f:
        f.write("# my notes\n" * 100)
    assert_exit_2(run_relay(write_conf(tmp_path, state_dir)), "not an iim outbox",
                  "move the file away")


def test_run_with_an_outbox_of_a_newer_relay_exits_2(tmp_path, state_dir) -> None:
    path = os.path.join(state_dir, "outbox.sqlite")
    fill(path, 1)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    assert_exit_2(run_relay(write_conf(tmp_path, state_dir)), "schema version 99",
                  "run the newer iim-relay")


def test_run_with_a_damaged_outbox_starts_and_serves_what_was_recovered(
        tmp_path, state_dir) -> None:
    path = os.path.join(state_dir, "outbox.sqlite")
    written = fill(path)
    damage(path, "header")
    log_path = tmp_path / "relay.log"
    with open(log_path, "ab") as log:
        relay = subprocess.Popen([sys.executable, "-m", "host_relay.cli", "run", "--config-file",
                                  write_conf(tmp_path, state_dir)],
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        snap = None
        while snap is None:
            assert relay.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                snap = control.request(os.path.join(state_dir, "control.sock"),
                                       {"cmd": "status"}, 2.0)
            except control.ControlError:
                time.sleep(0.05)
    finally:
        relay.terminate()
        relay.wait(15)
    assert snap["outbox"]["dead"] == sum(e.state == "dead" for e in written.values())
    # Pending ones are due at once; the sender (no Masakari here) may have tried some already.
    assert snap["outbox"]["depth"] == sum(e.state == "queued" for e in written.values())
    text = log_path.read_text()
    errors = [ln for ln in text.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "outbox_open" in errors[0], text
    assert "Recovered 100 pending and 100 dead-lettered" in errors[0]
    assert "Traceback" not in text
    assert relay.returncode == 0


@pytest.mark.slow
def test_an_outbox_locked_by_another_process_is_a_start_error_not_damage(tmp_path) -> None:
    path = str(tmp_path / "outbox.sqlite")
    fill(path, 3)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OutboxStartError) as info:
            open_outbox(str(tmp_path), path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in info.value.cause and "stop the other iim-relay" in info.value.fix
    assert sorted(os.listdir(tmp_path))[0] == "outbox.sqlite"
    assert not [n for n in os.listdir(tmp_path) if "corrupt" in n]


def test_rows_only_in_the_wal_of_a_killed_relay_survive_a_destroyed_header(
        tmp_path, caplog) -> None:
    """sqlite reads page 1 from the WAL when it has a newer copy: nothing lost, nothing moved."""
    path = str(tmp_path / "outbox.sqlite")
    subprocess.run([sys.executable, "-c", f"""
import os, uuid
from host_relay.outbox import Outbox
ob = Outbox({path!r})
for i in range(50):
    ob.put(str(uuid.UUID(int=i + 1)), "compute-1", "guest_hang", "silent", 100.0 + i)
os._exit(0)  # as after kill -9: nothing checkpointed into the main file
"""], check=True, timeout=60)
    assert os.path.getsize(path + "-wal") > os.path.getsize(path)
    damage(path, "header")
    with caplog.at_level(logging.INFO, logger="host_relay"):
        ob = open_outbox(str(tmp_path), path, wall_clock=lambda: NOW)
    try:
        got = rows_of(ob)
    finally:
        ob.close()
    assert sorted(got) == list(range(1, 51))
    assert {e.instance_uuid for e in got.values()} == {str(uuidlib.UUID(int=i + 1))
                                                       for i in range(50)}
    assert not [n for n in os.listdir(tmp_path) if ".corrupt-" in n]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def small_tmpfs(state_dir):
    mnt = os.path.join(state_dir, "small")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


def test_a_damaged_outbox_on_a_full_disk_is_left_as_it_is_and_salvaged_once_there_is_room(
        small_tmpfs) -> None:
    path = os.path.join(small_tmpfs, "outbox.sqlite")
    written = fill(path)
    damaged = damage(path, "header")
    filler = os.path.join(small_tmpfs, "filler")
    with open(filler, "wb") as f:  # the disk fills up (tmpfs: until ENOSPC)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    with pytest.raises(OutboxStartError) as info:
        open_outbox(small_tmpfs, path, wall_clock=lambda: NOW)
    assert "no copy can be made" in info.value.cause and "free space" in info.value.fix
    with open(path, "rb") as f:
        assert f.read() == damaged  # untouched, still where the next start looks
    assert sorted(os.listdir(small_tmpfs)) == ["filler", "outbox.sqlite"]  # no leftovers

    os.unlink(filler)
    ob = open_outbox(small_tmpfs, path, wall_clock=lambda: NOW)
    try:
        got = rows_of(ob)
    finally:
        ob.close()
    assert set(got) == {i for i, e in written.items() if e.state in ("queued", "dead")}


def test_salvage_keeps_tokens_and_detector_records(tmp_path, caplog) -> None:
    """Schema 2: a pending notification keeps its token (the sender's guard against a
    second POST) and the detectors' records survive, so a restored cooldown still holds."""
    from host_relay.outbox import NewEntry

    path = str(tmp_path / "outbox.sqlite")
    uuids = [str(uuidlib.UUID(int=i + 1)) for i in range(20)]
    records = {u: {"v": 1, "armed": True, "cooldown_until": 9000.0 + i}
               for i, u in enumerate(uuids)}
    with Outbox(path) as ob:
        ob.commit([NewEntry(token=f"tok-{i}", instance_uuid=u, hostname="compute-1",
                            kind="process_failure", reason="web failed", created_at=1000.0 + i)
                   for i, u in enumerate(uuids)], records, 1000.0)
    damage(path, "header")
    with caplog.at_level(logging.INFO, logger="host_relay"):
        ob = open_outbox(str(tmp_path), path, wall_clock=lambda: NOW)
    try:
        tokens = {r[0]: r[1] for r in ob._db.execute("SELECT instance_uuid, token FROM outbox")}
        assert tokens == {u: f"tok-{i}" for i, u in enumerate(uuids)}
        assert ob.records() == records
    finally:
        ob.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "20 pending" in errors[0] and "20 detector records" in errors[0]
