"""The instance table: one record per instance, origin claims, forgetting."""

from __future__ import annotations

import asyncio

from host_relay.instances import SOURCE_LIBVIRT, SOURCE_SOCKET_DIR, InstanceTable
from host_relay.outbox import Outbox
from host_relay.store import StoreWriter
from tests.host_relay.relay_testing import wait_until

UUID = "3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a01"


def test_libvirt_claim_wins_and_releasing_it_falls_back_to_the_socket() -> None:
    table = InstanceTable(forget_after=100.0)
    inst = table.claim(UUID, SOURCE_SOCKET_DIR, "/d/u.sock", "socket_dir", now=0.0)
    assert inst.wanted() == ("/d/u.sock", "socket_dir") and inst.gone_since is None
    assert table.claim(UUID, SOURCE_LIBVIRT, "/d/u.sock", "hotplug", now=1.0) is inst
    assert inst.origin == "hotplug"  # the same socket seen by both: libvirt names it
    table.release(UUID, SOURCE_LIBVIRT, now=2.0)
    assert inst.origin == "socket_dir" and inst.gone_since is None
    table.release(UUID, SOURCE_SOCKET_DIR, now=3.0)
    assert inst.wanted() is None and inst.gone_since == 3.0
    assert len(table) == 1  # kept: its detector's cooldown must outlive the socket


def test_gone_instances_are_forgotten_after_the_window_and_restored_ones_too() -> None:
    table = InstanceTable(forget_after=100.0)
    table.restore({"restored-never-seen": object()}, now=0.0)
    inst = table.claim(UUID, SOURCE_SOCKET_DIR, "/d/u.sock", "socket_dir", now=0.0)
    table.release(UUID, SOURCE_SOCKET_DIR, now=50.0)
    assert [i.uuid for i in table.expired(99.0)] == []
    assert [i.uuid for i in table.expired(100.0)] == ["restored-never-seen"]
    inst.conn = object()  # a connection still open is never forgotten
    assert table.expired(1000.0) == []
    inst.conn = None
    assert [i.uuid for i in table.expired(150.0)] == [UUID]
    assert len(table) == 0


def test_forgetting_deletes_the_stored_record(tmp_path) -> None:
    async def main() -> None:
        with Outbox(str(tmp_path / "o.sqlite")) as ob:
            ob.commit([], {UUID: {"v": 1}}, 0.0)
            writer = StoreWriter(ob, client=None)
            task = asyncio.create_task(writer.run())
            try:
                writer.forget(UUID)
                await wait_until(lambda: writer.pending == 0, 5.0)
                assert ob.records() == {}
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                writer.close()

    asyncio.run(main())
