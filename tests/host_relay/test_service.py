"""The running relay: discovery + channels + sender + control socket, in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import stat

import pytest

from host_relay import control
from host_relay.outbox import Outbox
from host_relay.service import Relay, Supervisor
from host_relay.settings import ChannelSettings, RelaySettings
from iim_protocol.messages import Failure, Heartbeat, Hello
from tests.host_relay.relay_testing import FakeGuest, FakeSender, listen, short_dir, wait_until

UUID_A = "3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a01"
UUID_B = "3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a02"
DETECTOR = {"missed_heartbeats": 2, "min_interval": 0.1, "min_uptime": 0.0}


@pytest.fixture
def state_dir():
    yield from short_dir()


def make_relay(state_dir: str, grace: float = 2.0):
    settings = RelaySettings(
        host="compute-7",
        state_path=state_dir,
        shutdown_grace=grace,
        channels=ChannelSettings(socket_dir=os.path.join(state_dir, "ch"),
                                 reconnect_initial=0.05, reconnect_max=0.2),
    )
    outbox = Outbox(settings.outbox_path)
    sender = FakeSender()
    return Relay(settings, dict(DETECTOR), outbox, sender), settings


async def ask(settings: RelaySettings, payload: dict) -> dict:
    return await asyncio.to_thread(control.request, settings.control_socket, payload, 5.0)


class Running:
    """``async with Running(relay)``: the relay runs in a task, shut down on exit."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.shutdown = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Relay:
        self.task = asyncio.create_task(self.relay.run(self.shutdown))
        # Ready as systemd is told (READY=1): records restored, the channel directory
        # made, watched and scanned.  A task merely spawned has not made it yet.
        await wait_until(lambda: self.relay.ready.is_set() or self.task.done(), 10.0)
        if self.task.done():
            self.task.result()  # the relay's start-up error, as it is
        await wait_until(self._answers, 10.0)
        return self.relay

    def _answers(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.relay.settings.control_socket)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    async def __aexit__(self, *exc) -> None:
        self.shutdown.set()
        await asyncio.wait_for(self.task, 5.0)


def test_sockets_come_and_go_without_restart_and_status_shows_them(state_dir) -> None:
    relay, settings = make_relay(state_dir)
    sock_dir = settings.channels.socket_dir

    async def main() -> None:
        async with Running(relay):
            a = await FakeGuest(sock_dir, UUID_A).start()
            await a.wait_connected()
            await a.send(Hello(protocol_version=1, agent_version="9.9", boot_id="b",
                               heartbeat_interval=5.0), Heartbeat(seq=1))
            junk = listen(os.path.join(sock_dir, "not-an-instance.sock"))
            b = await FakeGuest(sock_dir, UUID_B).start()
            await b.wait_connected()
            await b.send(Hello(protocol_version=1, agent_version="9.9", boot_id="b",
                               heartbeat_interval=5.0), Failure(seq=1, check="db", reason="down"))
            await b.send_raw(b"\x00garbage\x00")
            await wait_until(lambda: relay.outbox.latest_for(UUID_B) is not None, 2.0)
            await wait_until(
                lambda: relay.channels[UUID_B].decoder.stats.bytes_skipped >= 9, 2.0)

            snap = await ask(settings, {"cmd": "status"})
            assert set(snap) >= {"version", "host", "pid", "uptime", "socket_dir", "instances",
                                 "ignored_files", "outbox", "sender", "restarts"}
            assert snap["host"] == "compute-7"
            assert set(snap["instances"]) == {UUID_A, UUID_B}
            assert snap["ignored_files"] == ["not-an-instance.sock"]
            ia, ib = snap["instances"][UUID_A], snap["instances"][UUID_B]
            assert ia["channel"]["state"] == "connected"
            assert ia["channel"]["next_retry_in"] is None
            assert 0 <= ia["last_heartbeat_age"] < 2
            assert ia["detector"]["state"] == "armed"
            assert ia["last_failure"] is None
            assert set(ia["decoder"]) >= {"bytes_skipped", "frames_rejected", "rejected"}
            assert set(ia["throttle"]) == {"bytes", "frames", "cpu", "cpu_seconds", "seconds"}
            assert ib["last_failure"]["kind"] == "process_failure"
            assert ib["last_failure"]["state"] == "queued"
            assert ib["decoder"]["bytes_skipped"] >= 9
            assert snap["outbox"]["depth"] == 1
            assert snap["sender"] == {"sent": 0}
            assert snap["store"]["pending_notifications"] == 0
            assert snap["store"]["disk_problem"] is None
            assert ia["channel"]["syncs"] == 1  # one sync frame written on connect

            # Removed socket: dropped from the relay; the rest keeps running.
            await a.stop()
            await wait_until(lambda: UUID_A not in relay.channels, 2.0)
            await wait_until(lambda: not relay._supervisor.running(f"channel {UUID_A}"), 2.0)
            # ... and back again, still without a restart.
            a = await FakeGuest(sock_dir, UUID_A).start()
            await a.wait_connected()
            assert set(relay.channels) == {UUID_A, UUID_B}
            junk.close()
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_recreated_socket_keeps_the_instance_detector(state_dir) -> None:
    """Masakari restarting the instance re-creates QEMU's socket: its cooldown must hold."""
    relay, settings = make_relay(state_dir)
    sock_dir = settings.channels.socket_dir
    hello = Hello(protocol_version=1, agent_version="9.9", boot_id="b", heartbeat_interval=5.0)

    async def main() -> None:
        async with Running(relay):
            g = await FakeGuest(sock_dir, UUID_A).start()
            await g.wait_connected()
            await g.send(hello, Failure(seq=1, check="db", reason="down"))
            await wait_until(lambda: relay.outbox.stats(0)["depth"] == 1, 2.0)
            first = relay.channels[UUID_A].detector
            await g.stop()  # QEMU goes away with the old process...
            await wait_until(lambda: UUID_A not in relay.channels, 2.0)
            g = await FakeGuest(sock_dir, UUID_A).start()  # ...and a new one listens
            await g.wait_connected()
            assert relay.channels[UUID_A].detector is first
            await g.send(hello, Failure(seq=1, check="db", reason="down again"))
            await wait_until(
                lambda: relay.channels[UUID_A].decoder.stats.frames_ok == 2, 2.0)
            assert first.status(relay._clock()).state.value == "cooldown"
            assert relay.outbox.stats(0)["depth"] == 1  # still one: the cooldown held
            await g.stop()

    asyncio.run(main())


def test_shutdown_runs_in_order_and_lets_the_sender_finish(state_dir, caplog) -> None:
    relay, settings = make_relay(state_dir)

    async def main() -> None:
        async with Running(relay):
            g = await FakeGuest(settings.channels.socket_dir, UUID_A).start()
            await g.wait_connected()
        assert relay.sender.stopped_at is not None
        assert relay.channels == {}
        assert not os.path.exists(settings.control_socket)
        # The relay closed the outbox's sqlite connection on its way out.
        with pytest.raises(sqlite3.ProgrammingError, match="^Cannot operate on a closed database"):
            relay.outbox.stats(0)
        await g.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Shutdown ")]
    assert [s.split(":")[0] for s in steps] == [f"Shutdown {i}/6" for i in range(1, 7)]
    assert "closing 1 channels" in steps[1]


class _StuckSender(FakeSender):
    async def run(self, stop_event):
        await asyncio.Event().wait()  # an in-flight send that never ends


def test_shutdown_grace_bounds_a_stuck_sender(state_dir) -> None:
    relay, settings = make_relay(state_dir, grace=0.5)
    relay.sender = _StuckSender()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Running(relay) as r:
            start = loop.time()
        took = loop.time() - start
        assert 0.5 <= took < 2.0
        assert r.channels == {}

    asyncio.run(main())


def test_control_socket_is_private_and_single(state_dir) -> None:
    relay, settings = make_relay(state_dir)

    async def main() -> None:
        async with Running(relay):
            mode = stat.S_IMODE(os.stat(settings.control_socket).st_mode)
            assert mode == 0o600
            other, _ = make_relay(state_dir)
            with pytest.raises(control.AlreadyRunning):
                await other.run(asyncio.Event())
            other.outbox.close()
            with pytest.raises(control.ControlError, match="unknown command"):
                await ask(settings, {"cmd": "reboot"})
            relay._control.allowed_uids = set()  # as if we were another user
            with pytest.raises(control.ControlError, match="permission denied"):
                await ask(settings, {"cmd": "status"})
            relay._control.allowed_uids = {os.getuid()}
            reader, writer = await asyncio.open_unix_connection(settings.control_socket)
            writer.write(b"this is not json\n")
            answer = await asyncio.wait_for(reader.readline(), 2.0)
            assert b"bad request" in answer
            writer.close()

    asyncio.run(main())


def test_stale_control_socket_is_replaced(state_dir) -> None:
    relay, settings = make_relay(state_dir)
    listen(settings.control_socket).close()  # left behind by a relay that was killed

    async def main() -> None:
        async with Running(relay):
            snap = await ask(settings, {"cmd": "status"})
            assert snap["instances"] == {}

    asyncio.run(main())


def test_no_relay_running_is_a_clear_error(state_dir) -> None:
    path = os.path.join(state_dir, "control.sock")
    with pytest.raises(control.RelayNotRunning) as err:
        control.request(path, {"cmd": "status"})
    assert str(err.value) == (
        f"no iim-relay is running (control socket {path}: No such file or directory)"
    )


def test_supervisor_restarts_a_crashed_part() -> None:
    async def main() -> None:
        sup = Supervisor()
        runs = []

        async def part() -> None:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("boom")
            await asyncio.Event().wait()

        sup.spawn("part", part)
        await wait_until(lambda: len(runs) == 2, 3.0)
        assert sup.restarts == {"part": 1}
        with contextlib.suppress(asyncio.CancelledError):
            await sup.stop_all()
        assert not sup.running("part")

    asyncio.run(main())


def test_a_refusal_sent_before_the_request_is_read_reaches_the_client(tmp_path) -> None:
    """The relay answers a refused peer without reading its request and closes: the
    client's send then fails (EPIPE), and the answer waiting in its buffer must win."""
    import socket
    import threading

    path = str(tmp_path / "c.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()

    def refuse() -> None:
        peer, _ = server.accept()
        peer.sendall(b'{"error": "permission denied"}\n')
        peer.close()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    try:
        # Larger than the socket buffers, so the send cannot finish before the close.
        with pytest.raises(control.ControlError, match="permission denied"):
            control.request(path, {"cmd": "status", "pad": "x" * (4 << 20)}, 5.0)
    finally:
        thread.join(5)
        server.close()
