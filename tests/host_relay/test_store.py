"""The writer: a notification counts only once on disk; a broken disk never loses it.

Real file systems that fail (a full 1 MiB tmpfs, a loop-mounted ext4 returning EIO,
the same remounted read-only, frozen with fsfreeze), a real masakari-api behind a
proxy that counts the POSTs (Masakari's 409 would hide a second one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

import pytest
from keystoneauth1 import noauth, session

from host_relay.detector import DetectorRecord, Notify
from host_relay.disk import classify_disk_error
from host_relay.masakari_client import MasakariClient
from host_relay.outbox import Outbox
from host_relay.sender import Sender
from host_relay.store import StoreWriter, restore_records
from tests.host_relay.faulty_fs import full_tmpfs, loop_ext4, needs_root
from tests.host_relay.relay_testing import CountingProxy, wait_until

DIRECT_AFTER = 1.0
RECORD = DetectorRecord(armed=True, interval=1.0, boot_id="b", start_id="s", last_heard=100.0,
                        cooldown_until=400.0, notified_at=(100.0,))


@pytest.fixture
def proxy(masakari):
    p = CountingProxy(masakari.url)
    yield p
    p.close()


def make_client(url: str) -> MasakariClient:
    return MasakariClient(session.Session(auth=noauth.NoAuth(endpoint=url)),
                          connect_timeout=2.0, read_timeout=10.0)


class Rig:
    """A writer and a sender on one outbox, as the relay runs them."""

    def __init__(self, path: str, url: str) -> None:
        self.outbox = Outbox(path)
        client = make_client(url)
        self.writer = StoreWriter(self.outbox, client, direct_after=DIRECT_AFTER,
                                  retry_initial=0.1, retry_max=0.5)
        self.sender = Sender(self.outbox, client, backoff_initial=0.1, backoff_max=0.5,
                             direct_results=self.writer)
        self.committed: list = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Rig:
        self._tasks = [asyncio.create_task(self.writer.run()),
                       asyncio.create_task(self.sender.run(self._stop))]
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.writer.close()

    def decide(self, inst: str, host: str) -> None:
        """What the relay does with a detector's Notify + Persist."""
        def on_committed(entry) -> None:
            self.committed.append(entry)
            self.sender.wake()

        self.writer.submit(inst, notify=Notify("process_failure", "db", "db exited",
                                               time.monotonic()),
                           hostname=host, record=RECORD.to_json(), on_committed=on_committed)


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "host_relay.store" and r.levelno >= logging.ERROR]


async def broken_then_fixed(rig: Rig, inst: str, host: str, proxy, masakari, caplog,
                            kind: str, fix) -> None:
    rig.decide(inst, host)
    await wait_until(lambda: rig.writer.status().disk_problem is not None, 5.0)
    problem = rig.writer.status().disk_problem
    assert problem.errno_name == kind and problem.path == rig.outbox.path
    assert rig.outbox.path.rsplit("/", 1)[0] in problem.fix
    # The disk stays broken: the failure goes straight to Masakari, once.
    await wait_until(lambda: rig.writer.sent_directly == 1, DIRECT_AFTER + 10)
    assert proxy.posts.get(inst) == 1
    assert rig.committed == []  # not reported as queued: it is not on disk
    assert rig.writer.status().pending_notifications == 1
    assert rig.writer.status().sent_directly == 1
    await asyncio.sleep(1.0)  # more retries of the write...
    assert rig.writer.commit_failures >= 3
    errors = error_lines(caplog)
    assert len(errors) == 1, errors  # ...and still one ERROR line
    assert rig.outbox.path in errors[0] and kind in errors[0] and "fix:" in errors[0]
    fix()
    await wait_until(lambda: rig.committed, 10.0)
    (entry,) = rig.committed
    assert (entry.state, entry.last_status, entry.instance_uuid) == ("delivered", 202, inst)
    assert rig.writer.status().disk_problem is None and rig.writer.pending == 0
    await asyncio.sleep(1.0)  # a second POST by the sender would land by now
    assert proxy.posts[inst] == 1
    assert len(masakari.notifications_for(inst)) == 1


@pytest.mark.slow
@needs_root
@pytest.mark.masakari
def test_full_file_system_then_space_freed(proxy, masakari, masakari_host, caplog) -> None:
    inst = str(uuid.uuid4())
    with full_tmpfs("1m") as fs:
        async def main() -> None:
            async with Rig(os.path.join(fs.path, "outbox.sqlite"), proxy.url) as rig:
                fs.fill()
                await broken_then_fixed(rig, inst, masakari_host, proxy, masakari, caplog,
                                        "ENOSPC", fs.free)
                assert rig.outbox.records()[inst] == RECORD.to_json()
        asyncio.run(main())


@pytest.mark.slow
@needs_root
@pytest.mark.masakari
def test_disk_returning_eio_then_repaired(proxy, masakari, masakari_host, caplog) -> None:
    inst = str(uuid.uuid4())
    with loop_ext4() as fs:
        async def main() -> None:
            async with Rig(os.path.join(fs.path, "outbox.sqlite"), proxy.url) as rig:
                fs.break_io((rig.outbox.path,))
                await broken_then_fixed(rig, inst, masakari_host, proxy, masakari, caplog,
                                        "EIO", fs.fix_io)
                assert rig.outbox.records()[inst] == RECORD.to_json()
        asyncio.run(main())


@needs_root
@pytest.mark.masakari
def test_file_system_turned_read_only_loses_nothing(proxy, masakari, masakari_host,
                                                    caplog) -> None:
    """ext4 goes read-only under the open outbox (errors=remount-ro): sent directly, once.

    ``mount -o remount,ro`` is refused while the outbox is open for writing, and the
    kernel's read-only-after-error sticks until unmount, so recovery here is the
    operator's (fsck, mount, restart the relay), not something this process can see.
    """
    inst = str(uuid.uuid4())
    with loop_ext4(errors="remount-ro") as fs:
        async def main() -> None:
            async with Rig(os.path.join(fs.path, "outbox.sqlite"), proxy.url) as rig:
                fs.error_ro()
                rig.decide(inst, masakari_host)
                await wait_until(lambda: rig.writer.status().disk_problem is not None, 5.0)
                problem = rig.writer.status().disk_problem
                assert problem.errno_name == "EROFS" and "read-write" in problem.fix
                await wait_until(lambda: rig.writer.sent_directly == 1, DIRECT_AFTER + 10)
                await asyncio.sleep(1.0)
                assert proxy.posts[inst] == 1 and rig.committed == []
                assert len(masakari.notifications_for(inst)) == 1
                assert len(error_lines(caplog)) == 1
                assert rig.writer.status().pending_notifications == 1  # kept, still retried
        asyncio.run(main())


@needs_root
@pytest.mark.masakari
def test_short_outage_is_written_then_delivered_by_the_sender(proxy, masakari, masakari_host,
                                                              caplog) -> None:
    """Fixed before direct_after: no direct send, the sender delivers the queued row once."""
    inst = str(uuid.uuid4())
    with full_tmpfs("1m") as fs:
        async def main() -> None:
            async with Rig(os.path.join(fs.path, "outbox.sqlite"), proxy.url) as rig:
                rig.writer._direct_after = 30.0
                fs.fill()
                rig.decide(inst, masakari_host)
                await wait_until(lambda: rig.writer.status().disk_problem is not None, 5.0)
                fs.free()
                await wait_until(lambda: rig.committed, 5.0)
                assert rig.committed[0].state == "queued"
                await wait_until(lambda: masakari.notifications_for(inst), 10.0)
                await asyncio.sleep(0.5)
                assert proxy.posts[inst] == 1 and rig.writer.sent_directly == 0
        asyncio.run(main())


@pytest.mark.slow
@needs_root
@pytest.mark.masakari
def test_frozen_file_system_never_stops_the_loop(proxy, masakari, masakari_host,
                                                 caplog) -> None:
    """fsfreeze holds the commit; the loop runs on, the failure is sent, and sent once."""
    inst = str(uuid.uuid4())
    with loop_ext4() as fs:
        async def main() -> None:
            async with Rig(os.path.join(fs.path, "outbox.sqlite"), proxy.url) as rig:
                fs.freeze()
                try:
                    rig.decide(inst, masakari_host)
                    lateness = []
                    for _ in range(40):  # 2 s of 50 ms sleeps while the commit hangs
                        t = time.monotonic()
                        await asyncio.sleep(0.05)
                        lateness.append(time.monotonic() - t - 0.05)
                    assert max(lateness) < 0.2
                    assert rig.writer.status().disk_problem.errno_name == "FROZEN"
                    await wait_until(lambda: rig.writer.sent_directly == 1, 10.0)
                    assert proxy.posts.get(inst) == 1 and rig.committed == []
                finally:
                    fs.thaw()
                await wait_until(lambda: rig.committed, 10.0)
                # The row reached the disk as queued while the direct send was under way:
                # the sender records the direct answer instead of posting again.
                await wait_until(lambda: rig.outbox.get(rig.committed[0].id).state
                                 == "delivered", 10.0)
                await asyncio.sleep(0.5)
                assert proxy.posts[inst] == 1
                assert len(masakari.notifications_for(inst)) == 1
        asyncio.run(main())


def test_records_are_stored_on_the_wall_clock_and_restored_on_the_monotonic(tmp_path) -> None:
    with Outbox(str(tmp_path / "o.sqlite")) as ob:
        mono, wall = 1000.0, 1_800_000_000.0
        stored = RECORD.shifted(wall - mono).to_json()
        ob.commit([], {"u-1": stored, "u-2": {"v": 99}}, wall)
        # The relay restarts 500 s later on a monotonic clock that started again.
        restored = restore_records(ob, DetectorRecord, 20.0, wall + 500)
    assert set(restored) == {"u-1"}  # the unreadable one is logged and left out
    r = restored["u-1"]
    assert r.last_heard == pytest.approx(RECORD.last_heard - mono + 20.0 - 500)
    assert r.cooldown_until == pytest.approx(RECORD.cooldown_until - mono + 20.0 - 500)


def test_disk_errors_are_named_with_their_fix() -> None:
    import sqlite3

    full = sqlite3.OperationalError("database or disk is full")
    assert classify_disk_error(full, "/var/lib/iim/outbox.sqlite")[0] == "ENOSPC"
    ro = sqlite3.OperationalError("attempt to write a readonly database")
    kind, fix = classify_disk_error(ro, "/var/lib/iim/outbox.sqlite")
    assert kind == "EROFS" and "/var/lib/iim" in fix and "read-write" in fix
    assert classify_disk_error(OSError(5, "Input/output error"), "/x/o")[0] == "EIO"


def test_pending_writes_file_round_trips_and_rejects_what_is_not_ours(tmp_path) -> None:
    from host_relay import fallback
    from host_relay.outbox import NewEntry

    path = str(tmp_path / fallback.FILE_NAME)
    assert fallback.load(path) == ([], {})
    sent = NewEntry("t1", "u1", "h", "guest_hang", "silent", 1.5,
                    outcome=("delivered", 202, "n-1", "", 2.5))
    waiting = NewEntry("t2", "u2", "h", "process_failure", "db", 3.0)
    fallback.save(path, [sent, waiting], {"u1": RECORD.to_json(), "u3": None})
    entries, records = fallback.load(path)
    assert entries == [sent, waiting]
    assert records == {"u1": RECORD.to_json(), "u3": None}
    assert "1 already sent" in fallback.describe(entries, records)
    with open(path, "w") as f:
        f.write('{"v": 99}')
    with pytest.raises(ValueError):
        fallback.load(path)
    fallback.clear(path)
    fallback.clear(path)  # twice is fine
    assert fallback.load(path) == ([], {})
