"""DomainWatcher and the Relay against libvirt's test driver (no libvirtd, no QEMU).

Each test gets a private in-memory host from a node XML (``test:///<path>``)
whose domains start running: one with a static iim channel and Nova metadata,
one with a virtio-serial controller but no channel, one without a controller
whose serial port 1 is a real TCP listener of the test, and one with nothing.
The test driver cannot hot-plug (``attachDeviceFlags`` fails with
VIR_ERR_NO_SUPPORT, code 3): these tests check that the relay reports that
once per domain start and does not retry in a loop.  The hot-plug itself is
tested against a real libvirtd in test_libvirt_relay.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from host_relay import socket_dir, status
from host_relay.cli import format_status
from host_relay.detector import DomainState
from host_relay.libvirt_watch import DomainWatcher
from host_relay.outbox import Outbox
from host_relay.service import Relay
from host_relay.settings import ChannelSettings, LibvirtSettings, RelaySettings
from iim_protocol.codec import encode
from iim_protocol.messages import Heartbeat, Hello
from tests.host_relay.relay_testing import FakeSender, short_dir, wait_until

libvirt = pytest.importorskip("libvirt")

STATIC = "11111111-2222-4333-8444-555555555501"
NO_HOTPLUG = "11111111-2222-4333-8444-555555555502"
SERIAL = "11111111-2222-4333-8444-555555555503"
BARE = "11111111-2222-4333-8444-555555555504"
STOPPED = "11111111-2222-4333-8444-555555555599"  # never a domain: its socket is stale

NOVA = """<metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
<nova:name>{name}</nova:name><nova:owner><nova:project uuid="p">prod</nova:project></nova:owner>
</nova:instance></metadata>"""


def _domain(uuid: str, name: str, devices: str, nova: str = "") -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>{nova}"
            "<memory>65536</memory><os><type>hvm</type></os>"
            f"<devices>{devices}</devices></domain>")


@pytest.fixture
def sock_dir():
    yield from short_dir()


@pytest.fixture
def serial_listener():
    """Plays QEMU's TCP serial chardev (server) for the SERIAL domain's port 1."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.setblocking(False)
    yield srv
    srv.close()


@pytest.fixture
def node(tmp_path, sock_dir, serial_listener):
    port = serial_listener.getsockname()[1]
    static_path = os.path.join(sock_dir, f"{STATIC}.sock")
    xml = "<node>" + "".join([
        _domain(STATIC, "instance-00000001",
                "<controller type='virtio-serial' index='0'/>"
                f"<channel type='unix'><source mode='bind' path='{static_path}'/>"
                "<target type='virtio' name='org.openstack.iim.0'/></channel>",
                NOVA.format(name="web-1")),
        _domain(NO_HOTPLUG, "instance-00000002",
                "<controller type='virtio-serial' index='0'/>", NOVA.format(name="db-1")),
        _domain(SERIAL, "instance-00000003",
                "<serial type='tcp'><source mode='bind' host='127.0.0.1' "
                f"service='{port}'/><protocol type='raw'/><target port='1'/></serial>"),
        _domain(BARE, "other-vm", ""),
    ]) + "</node>"
    path = tmp_path / "node.xml"
    path.write_text(xml)
    return f"test://{path}"


class Sink:
    """Records what the watcher tells the relay."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.states: dict[str, DomainState] = {}
        self.channels: dict[str, tuple[str, str]] = {}

    def domain_state(self, uuid, state) -> None:
        self.calls.append(("state", uuid, state))
        self.states[uuid] = state

    def add_channel(self, uuid, path, origin) -> None:
        self.calls.append(("add", uuid, path, origin))
        self.channels[uuid] = (path, origin)

    def remove_channel(self, uuid) -> None:
        self.calls.append(("remove", uuid))
        self.channels.pop(uuid, None)


def settings(uri: str, **kw) -> LibvirtSettings:
    return LibvirtSettings(connection_uri=uri, reconnect_initial=0.1, reconnect_max=0.5, **kw)


async def running(watcher: DomainWatcher) -> asyncio.Task:
    task = asyncio.create_task(watcher.run())
    await wait_until(lambda: watcher.connected and len(watcher.domains) == 4, 5.0)
    return task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_start_up_reconciles_every_domain_and_says_why_not(node, sock_dir) -> None:
    sink = Sink()

    async def main() -> None:
        watcher = DomainWatcher(settings(node), sock_dir, sink)
        task = await running(watcher)
        try:
            snap = watcher.snapshot()
        finally:
            await stop(task)
        assert sink.states == {u: DomainState.RUNNING for u in (STATIC, NO_HOTPLUG, SERIAL, BARE)}
        assert sink.channels[STATIC] == (os.path.join(sock_dir, f"{STATIC}.sock"), "static")
        assert snap[STATIC]["origin"] == "static" and snap[STATIC]["problem"] is None
        assert snap[STATIC]["nova"] == "prod/web-1"
        # The test driver cannot hot-plug: reported with libvirt's error and a hint.
        assert snap[NO_HOTPLUG]["problem"] == "attach_failed"
        assert "not supported" in snap[NO_HOTPLUG]["reason"]
        assert "code 3" in snap[NO_HOTPLUG]["last_error"]
        assert snap[NO_HOTPLUG]["attach_attempts"] == 1 and snap[NO_HOTPLUG]["origin"] is None
        assert NO_HOTPLUG not in sink.channels
        # No controller: the fix is named, and serial port 1 is read instead (TCP here).
        assert snap[SERIAL]["problem"] == "no_controller"
        assert "hw_qemu_guest_agent=yes" in snap[SERIAL]["fix"]
        path, origin = sink.channels[SERIAL]
        assert origin == "serial" and path.startswith("tcp:127.0.0.1:")
        assert snap[BARE]["problem"] == "no_controller" and "no serial port 1" in snap[BARE][
            "reason"]
        assert BARE not in sink.channels

    asyncio.run(main())


def test_states_follow_lifecycle_events_and_attach_is_not_retried_in_a_loop(
        node, sock_dir) -> None:
    sink = Sink()

    async def main() -> None:
        watcher = DomainWatcher(settings(node), sock_dir, sink)
        task = await running(watcher)
        try:
            # Drive the watcher's own connection: the test driver's host is per connection.
            lv = watcher._conn
            static, no_hotplug = (lv.lookupByUUIDString(u) for u in (STATIC, NO_HOTPLUG))
            static.suspend()
            await wait_until(lambda: sink.states[STATIC] is DomainState.PAUSED, 2.0)
            static.resume()
            await wait_until(lambda: sink.states[STATIC] is DomainState.RUNNING, 2.0)
            sink.calls.clear()
            static.destroy()
            await wait_until(lambda: sink.states[STATIC] is DomainState.SHUTOFF, 2.0)
            await wait_until(lambda: STATIC not in sink.channels, 2.0)
            assert ("remove", STATIC) in sink.calls
            static.create()
            await wait_until(lambda: STATIC in sink.channels, 2.0)
            assert sink.states[STATIC] is DomainState.RUNNING
            assert watcher.snapshot()[STATIC]["origin"] == "static"

            # Pause/resume of the domain whose hot-plug failed: no new attempt.
            no_hotplug.suspend()
            no_hotplug.resume()
            await wait_until(lambda: sink.states[NO_HOTPLUG] is DomainState.RUNNING, 2.0)
            await asyncio.sleep(0.2)
            assert watcher.snapshot()[NO_HOTPLUG]["attach_attempts"] == 1
            # A new start of the domain is a new chance: exactly one more attempt.
            no_hotplug.destroy()
            no_hotplug.create()
            await wait_until(lambda: watcher.snapshot()[NO_HOTPLUG]["attach_attempts"] == 2, 2.0)
            await asyncio.sleep(0.2)
            assert watcher.snapshot()[NO_HOTPLUG]["attach_attempts"] == 2
        finally:
            await stop(task)

    asyncio.run(main())


def test_opt_in_list_leaves_the_others_alone(node, sock_dir) -> None:
    sink = Sink()

    async def main() -> None:
        watcher = DomainWatcher(settings(node, opt_in="list", instance_uuids=(STATIC,)),
                                sock_dir, sink)
        task = await running(watcher)
        snap = watcher.snapshot()
        await stop(task)
        assert set(sink.channels) == {STATIC}
        for uuid in (NO_HOTPLUG, SERIAL, BARE):
            assert snap[uuid]["problem"] == "not_opted_in" and snap[uuid]["opted_in"] is False
            assert snap[uuid]["attach_attempts"] == 0
        # Domain states still feed the detector for every domain.
        assert set(sink.states) == {STATIC, NO_HOTPLUG, SERIAL, BARE}

    asyncio.run(main())


def test_opt_in_by_nova_metadata(node, sock_dir) -> None:
    sink = Sink()

    async def main() -> None:
        watcher = DomainWatcher(settings(node, opt_in="match", match_metadata="^prod/web-"),
                                sock_dir, sink)
        task = await running(watcher)
        snap = watcher.snapshot()
        await stop(task)
        assert snap[STATIC]["opted_in"] is True
        assert snap[NO_HOTPLUG]["opted_in"] is False and "prod/db-1" in snap[NO_HOTPLUG]["reason"]

    asyncio.run(main())


def test_stale_sockets_are_removed_only_when_certainly_stale(node, sock_dir) -> None:
    def dead_socket(path: str) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.close()  # the file stays, nobody listens

    stale = os.path.join(sock_dir, f"{STOPPED}.sock")
    dead_socket(stale)
    alive_path = os.path.join(sock_dir, "11111111-2222-4333-8444-555555555598.sock")
    alive = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    alive.bind(alive_path)
    alive.listen(1)
    not_a_socket = os.path.join(sock_dir, "11111111-2222-4333-8444-555555555597.sock")
    open(not_a_socket, "w").close()
    running_dead = os.path.join(sock_dir, f"{BARE}.sock")  # its domain runs: not touched
    dead_socket(running_dead)

    async def main() -> DomainWatcher:
        watcher = DomainWatcher(settings(node), sock_dir, Sink())
        task = await running(watcher)
        await stop(task)
        return watcher

    try:
        watcher = asyncio.run(main())
    finally:
        alive.close()
    assert not os.path.exists(stale)
    assert watcher.connection_status()["stale_sockets_removed"] == [stale]
    assert os.path.exists(alive_path) and os.path.exists(not_a_socket)
    assert os.path.exists(running_dead)


def test_unreachable_libvirtd_is_reported_and_retried(sock_dir) -> None:
    async def main() -> dict:
        watcher = DomainWatcher(settings(f"qemu:///session?socket={sock_dir}/none"),
                                sock_dir, Sink())
        task = asyncio.create_task(watcher.run())
        await wait_until(lambda: watcher.connection_status()["next_retry_in"] is not None, 5.0)
        status = watcher.connection_status()
        await stop(task)
        return status

    status = asyncio.run(main())
    assert status["connected"] is False and "none" in status["last_error"]


def test_unreachable_libvirtd_is_retried_with_growing_delays_up_to_reconnect_max(sock_dir):
    """The watcher's reconnect loop is host_relay.backoff's: doubling from
    reconnect_initial, capped at reconnect_max (clock frozen at 0, so each
    next_retry_at is the delay itself; rng 0.5 means no jitter)."""

    async def main() -> list[float]:
        watcher = DomainWatcher(settings(f"qemu:///session?socket={sock_dir}/none"),
                                sock_dir, Sink(), clock=lambda: 0.0, rng=lambda: 0.5)
        task = asyncio.create_task(watcher.run())
        seen: list[float] = []
        try:
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and (not seen or seen[-1] < 0.5):
                at = watcher.next_retry_at
                if at is not None and (not seen or at != seen[-1]):
                    seen.append(at)
                await asyncio.sleep(0.005)
        finally:
            await stop(task)
        return seen

    assert asyncio.run(main()) == pytest.approx([0.1, 0.2, 0.4, 0.5])


def test_socket_dir_is_given_to_the_configured_owner(sock_dir) -> None:
    path = os.path.join(sock_dir, "ch")
    problem = socket_dir.prepare(path, "nobody", "")
    st = os.stat(path)
    if os.geteuid() == 0:
        import pwd

        assert problem is None
        assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam("nobody").pw_uid, 0o770)
    else:
        assert "cannot give" in problem
    assert "no such user" in socket_dir.prepare(path, "no-such-user-iim", "")


# --- the Relay with libvirt ---------------------------------------------------------------------


def test_relay_reads_the_serial_fallback_and_shows_origin_state_and_reasons(
        node, sock_dir, serial_listener) -> None:
    relay_settings = RelaySettings(
        host="compute-7", state_path=sock_dir, shutdown_grace=1.0,
        channels=ChannelSettings(socket_dir=os.path.join(sock_dir, "ch"),
                                 reconnect_initial=0.05, reconnect_max=0.2),
        libvirt=settings(node, socket_owner="root"),
    )
    relay = Relay(relay_settings, {"missed_heartbeats": 2, "min_interval": 0.1,
                                   "min_uptime": 0.0},
                  Outbox(relay_settings.outbox_path), FakeSender())

    async def main() -> tuple[dict, dict]:
        shutdown = asyncio.Event()
        task = asyncio.create_task(relay.run(shutdown))
        loop = asyncio.get_running_loop()
        try:
            guest, _ = await asyncio.wait_for(loop.sock_accept(serial_listener), 5.0)
            with guest:
                await loop.sock_sendall(guest, encode(Hello(
                    protocol_version=1, agent_version="t", boot_id="b",
                    heartbeat_interval=1.0)) + encode(Heartbeat(seq=1)))
                def detector():
                    inst = relay.instances.get(SERIAL)
                    return inst.detector.status(relay._clock()) if inst and inst.detector else None

                await wait_until(lambda: (d := detector()) and d.state.value == "armed", 5.0)
                relay._libvirt._conn.lookupByUUIDString(SERIAL).suspend()
                await wait_until(lambda: detector().domain.value == "paused", 2.0)
                paused = status.to_json(await relay.status())
        finally:
            shutdown.set()
            await asyncio.wait_for(task, 5.0)
        return paused

    start = time.monotonic()
    snap = asyncio.run(main())
    assert time.monotonic() - start < 15
    serial = snap["instances"][SERIAL]
    assert serial["origin"] == "serial" and serial["channel"]["transport"] == "tcp"
    assert serial["domain_state"] == "paused" and serial["problem"] == "no_controller"
    assert snap["instances"][STATIC]["origin"] == "static"
    assert snap["instances"][NO_HOTPLUG]["origin"] is None
    assert snap["instances"][NO_HOTPLUG]["problem"] == "attach_failed"
    assert snap["libvirt"]["connected"] is True and snap["libvirt"]["enabled"] is True
    text = format_status(snap)
    assert f"libvirt {node}: connected" in text
    assert "hw_qemu_guest_agent=yes" in text and "not supported" in text
    assert SERIAL in text and "serial" in text
