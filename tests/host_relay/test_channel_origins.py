"""The Relay's channel sources: one connection per instance, libvirt wins, ptys read raw."""

from __future__ import annotations

import asyncio
import os
import termios

import pytest

from host_relay import status
from host_relay.detector import DomainState
from host_relay.outbox import Outbox
from host_relay.service import Relay
from host_relay.settings import ChannelSettings, LibvirtSettings, RelaySettings
from iim_protocol.codec import encode
from iim_protocol.messages import Heartbeat, Hello
from tests.host_relay.relay_testing import FakeGuest, FakeSender, short_dir, wait_until

UUID = "3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a0c"
HELLO = Hello(protocol_version=1, agent_version="t", boot_id="b", heartbeat_interval=1.0)


@pytest.fixture
def state_dir():
    yield from short_dir()


def make_relay(state_dir: str) -> Relay:
    settings = RelaySettings(
        host="compute-7", state_path=state_dir, shutdown_grace=1.0,
        channels=ChannelSettings(socket_dir=os.path.join(state_dir, "ch"),
                                 reconnect_initial=0.05, reconnect_max=0.2),
        libvirt=LibvirtSettings(connection_uri=""),  # the test plays libvirt's part
    )
    return Relay(settings, {"missed_heartbeats": 2, "min_interval": 0.1, "min_uptime": 0.0},
                 Outbox(settings.outbox_path), FakeSender())


async def run_relay(relay: Relay, body) -> None:
    shutdown = asyncio.Event()
    task = asyncio.create_task(relay.run(shutdown))
    try:
        await wait_until(lambda: relay._supervisor.running("discovery")
                         and relay.ready.is_set(), 3.0)
        await body()
    finally:
        shutdown.set()
        await asyncio.wait_for(task, 5.0)


async def snapshot(relay) -> dict:
    """What the control socket would answer."""
    return status.to_json(await relay.status())


def test_socket_seen_by_discovery_and_libvirt_is_one_connection(state_dir) -> None:
    relay = make_relay(state_dir)
    sock_dir = relay.settings.channels.socket_dir
    os.makedirs(sock_dir)

    async def body() -> None:
        guest = await FakeGuest(sock_dir, UUID).start()
        await guest.wait_connected()
        conn = relay.channels[UUID]
        assert (await snapshot(relay))["instances"][UUID]["origin"] == "socket_dir"
        relay.add_channel(UUID, guest.path, "hotplug")  # the same socket, now from libvirt
        assert relay.channels[UUID] is conn  # kept, not re-created
        assert (await snapshot(relay))["instances"][UUID]["origin"] == "hotplug"
        relay.domain_state(UUID, DomainState.PAUSED)
        assert (await snapshot(relay))["instances"][UUID]["detector"]["domain"] == "paused"
        relay.remove_channel(UUID)  # libvirt lets go; the socket is still there
        assert relay.channels[UUID] is conn
        assert (await snapshot(relay))["instances"][UUID]["origin"] == "socket_dir"
        await guest.stop()
        await wait_until(lambda: UUID not in relay.channels, 3.0)
        assert guest.connections == 1

    asyncio.run(run_relay(relay, body))


def test_serial_pty_is_read_raw_and_keeps_the_detector(state_dir) -> None:
    relay = make_relay(state_dir)
    master, slave = os.openpty()  # QEMU holds the master; the relay opens the slave path
    pty_path = os.ttyname(slave)

    async def body() -> None:
        relay.domain_state(UUID, DomainState.RUNNING)
        relay.add_channel(UUID, pty_path, "serial")
        conn = relay.channels[UUID]
        assert conn.transport == "pty"
        await wait_until(lambda: conn.state == "connected", 3.0)
        # Raw mode: nothing echoed back into the guest, no line-end rewriting.
        attrs = termios.tcgetattr(slave)
        assert not attrs[3] & termios.ECHO and not attrs[3] & termios.ICANON
        os.write(master, encode(HELLO) + encode(Heartbeat(seq=1)) + encode(Heartbeat(seq=2)))
        detector = relay.instances.get(UUID).detector
        await wait_until(lambda: detector.status(relay._clock()).last_seq == 2, 3.0)
        snap = (await snapshot(relay))["instances"][UUID]
        assert snap["origin"] == "serial" and snap["channel"]["path"] == pty_path
        assert snap["decoder"]["frames_ok"] == 3
        # The same instance hot-plugged later: a new connection, the same detector.
        guest = await FakeGuest(relay.settings.channels.socket_dir, UUID).start()
        relay.add_channel(UUID, guest.path, "hotplug")
        await guest.wait_connected()
        assert relay.channels[UUID].transport == "unix"
        assert relay.instances.get(UUID).detector is detector
        await guest.stop()

    try:
        os.makedirs(relay.settings.channels.socket_dir)
        asyncio.run(run_relay(relay, body))
    finally:
        os.close(master)
        os.close(slave)


def test_pty_hang_up_is_a_close_not_a_crash(state_dir, caplog) -> None:
    relay = make_relay(state_dir)
    master, slave = os.openpty()
    pty_path = os.ttyname(slave)
    os.close(slave)

    async def body() -> None:
        relay.add_channel(UUID, pty_path, "serial")
        conn = relay.channels[UUID]
        await wait_until(lambda: conn.state == "connected", 3.0)
        os.close(master)  # QEMU went away: the slave reads EIO
        await wait_until(lambda: conn.counters["disconnects"] == 1, 3.0)
        assert conn.counters["errors"] == 0

    os.makedirs(relay.settings.channels.socket_dir)
    asyncio.run(run_relay(relay, body))
    assert "Traceback" not in caplog.text
