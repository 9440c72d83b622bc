"""iim_relay_paused{origin}: whose pauses hold, from a real in-process relay's /metrics."""

from __future__ import annotations

import asyncio

import pytest

from iim_protocol.messages import Heartbeat, Pause
from tests.host_relay.relay_testing import FakeGuest, short_dir, wait_until
from tests.host_relay.test_metrics import (
    HELLO,
    UUID_A,
    UUID_B,
    WAIT,
    free_port,
    make_relay,
    one,
    scrape_when_up,
)
from tests.host_relay.test_service import Running


@pytest.fixture
def state_dir():
    yield from short_dir()


def test_paused_gauge_counts_host_and_guest_pauses_apart(state_dir) -> None:
    port = free_port()
    relay, settings = make_relay(state_dir, listen=f"127.0.0.1:{port}")
    sock_dir = settings.channels.socket_dir

    async def main() -> None:
        async with Running(relay):
            a = await FakeGuest(sock_dir, UUID_A).start()
            b = await FakeGuest(sock_dir, UUID_B).start()
            await a.wait_connected()
            await b.wait_connected()
            await a.send(HELLO, Heartbeat(seq=1))
            await b.send(HELLO, Heartbeat(seq=1))
            await wait_until(lambda: all(relay.channels[u].counters["heartbeats"] >= 1
                                         for u in (UUID_A, UUID_B)), WAIT)
            m = await scrape_when_up(port)
            assert one(m, "iim_relay_paused", origin="host") == 0
            assert one(m, "iim_relay_paused", origin="guest") == 0

            answer = await relay.handle_request(
                {"cmd": "pause", "instance": UUID_A, "seconds": 600, "reason": "drain"})
            assert answer["stored"] is True and answer["host_pause"]["reason"] == "drain"
            await b.send(Pause(duration=600, reason="guest upgrade"))
            await wait_until(lambda: relay.channels[UUID_B].detector.state.value == "paused",
                             WAIT)
            m = await scrape_when_up(port)
            assert one(m, "iim_relay_paused", origin="host") == 1
            assert one(m, "iim_relay_paused", origin="guest") == 1
            assert one(m, "iim_relay_instances", state="paused") == 2
            # The stored record holds the host pause (what a restart reads back).
            stored = relay.outbox.records()[UUID_A]
            assert stored["host_pause_reason"] == "drain" and stored["host_pause_until"] > 0

            answer = await relay.handle_request({"cmd": "resume", "instance": UUID_A})
            assert answer["was_paused"] is True and answer["state"] == "armed"
            m = await scrape_when_up(port)
            assert one(m, "iim_relay_paused", origin="host") == 0
            assert one(m, "iim_relay_paused", origin="guest") == 1
            assert relay.outbox.records()[UUID_A]["host_pause_until"] is None
            await a.stop()
            await b.stop()

    asyncio.run(main())
