"""Prometheus metrics of a real, in-process relay, scraped over HTTP and parsed."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import textwrap
import time
import urllib.error
import urllib.request

import psutil
import pytest
from keystoneauth1 import noauth, session
from prometheus_client.parser import text_string_to_metric_families

from host_relay import conf as relay_conf
from host_relay.masakari_client import MasakariClient
from host_relay.outbox import Outbox
from host_relay.sender import Sender
from host_relay.service import Relay
from host_relay.settings import ChannelSettings, MetricsSettings, RelaySettings
from iim_protocol.codec import encode
from iim_protocol.messages import Failure, Heartbeat, Hello
from tests.host_relay.relay_testing import FakeGuest, FakeSender, short_dir, wait_until
from tests.host_relay.test_service import Running

UUID_A = "5c1e2d3f-0a1b-4c2d-8e3f-4a5b6c7d8e01"
UUID_B = "5c1e2d3f-0a1b-4c2d-8e3f-4a5b6c7d8e02"
DETECTOR = {"missed_heartbeats": 2, "min_interval": 0.1, "min_uptime": 0.0}
HELLO = Hello(protocol_version=1, agent_version="9.9", boot_id="b", heartbeat_interval=5.0)
GARBAGE = b"\x00not a frame at all\x00"
WAIT = 5.0


@pytest.fixture
def state_dir():
    yield from short_dir()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_relay(state_dir: str, listen: str = "", sender=None, host: str = "compute-7"):
    settings = RelaySettings(
        host=host,
        state_path=state_dir,
        channels=ChannelSettings(socket_dir=os.path.join(state_dir, "ch"),
                                 reconnect_initial=0.05, reconnect_max=0.2),
        metrics=MetricsSettings(listen=listen),
    )
    outbox = Outbox(settings.outbox_path)
    if sender is None:
        sender = FakeSender()
    elif callable(sender):
        sender = sender(outbox)
    return Relay(settings, dict(DETECTOR), outbox, sender), settings


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=WAIT) as response:  # noqa: S310 - our own URL
        assert response.status == 200
        return response.read().decode()


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}; off the loop, which must answer the collector."""
    text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def scrape_when_up(port: int) -> dict[tuple[str, tuple], float]:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await scrape(port)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def one(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_scrape_shows_instances_bad_input_throttling_and_the_outbox(state_dir) -> None:
    port = free_port()
    relay, settings = make_relay(state_dir, listen=f"127.0.0.1:{port}")
    sock_dir = settings.channels.socket_dir
    corrupt = bytearray(encode(Heartbeat(seq=99)))
    corrupt[-1] ^= 0xFF  # bad CRC

    async def main() -> None:
        async with Running(relay):
            a = await FakeGuest(sock_dir, UUID_A).start()
            b = await FakeGuest(sock_dir, UUID_B).start()
            await a.wait_connected()
            await b.wait_connected()
            await a.send(HELLO, Heartbeat(seq=1), Heartbeat(seq=2), Heartbeat(seq=3))
            await a.send_raw(GARBAGE + bytes(corrupt))
            await a.send(Heartbeat(seq=4))
            await b.send(HELLO, Failure(seq=1, check="db", reason="postgres exited"))
            await wait_until(lambda: relay.outbox.latest_for(UUID_B) is not None, WAIT)
            await wait_until(lambda: relay.channels[UUID_A].counters["heartbeats"] >= 4, WAIT)

            m = await scrape_when_up(port)
            assert one(m, "iim_relay_instance_state", instance_uuid=UUID_A, state="armed") == 1
            assert one(m, "iim_relay_instance_state", instance_uuid=UUID_B, state="cooldown") == 1
            # one series per instance, for its current state only
            assert sum(1 for name, _ in m if name == "iim_relay_instance_state") == 2
            assert one(m, "iim_relay_instances", state="armed") == 1
            assert one(m, "iim_relay_instances", state="cooldown") == 1
            assert one(m, "iim_relay_instances", state="failed") == 0
            assert one(m, "iim_relay_channel_connected", instance_uuid=UUID_A) == 1
            assert one(m, "iim_relay_heartbeats_total", instance_uuid=UUID_A) == 4
            assert one(m, "iim_relay_heartbeats_total", instance_uuid=UUID_B) == 0
            assert one(m, "iim_relay_bytes_skipped_total", instance_uuid=UUID_A) >= len(GARBAGE)
            assert one(m, "iim_relay_bytes_skipped_total", instance_uuid=UUID_B) == 0
            assert one(m, "iim_relay_frames_rejected_total", instance_uuid=UUID_A) == 1
            assert one(m, "iim_relay_frames_rejected_by_reason_total", reason="bad_crc") == 1
            assert one(m, "iim_relay_throttled_seconds_total", instance_uuid=UUID_A) == 0
            assert one(m, "iim_relay_throttled_total", budget="bytes") == 0
            assert one(m, "iim_relay_notifications_total", result="queued") == 1
            assert one(m, "iim_relay_notifications_total", result="delivered") == 0
            assert one(m, "iim_relay_outbox_depth") == 1
            assert 0 <= one(m, "iim_relay_outbox_oldest_queued_age_seconds") < WAIT
            assert one(m, "iim_relay_outbox_dead_letters") == 0
            assert one(m, "iim_relay_detection_to_queue_seconds_count") == 1
            assert 0 <= one(m, "iim_relay_detection_to_queue_seconds_sum") < WAIT
            assert one(m, "iim_relay_delivery_latency_seconds_count") == 0
            assert one(m, "iim_relay_info", version=relay_conf.loader.iim_protocol.__version__,
                       host="compute-7") == 1
            assert ("process_open_fds", ()) in m  # the process collector, on our own registry
            # The detectors' own counters and the writer, from the one status model.
            assert one(m, "iim_relay_detector_notified_total", kind="process_failure") == 1
            assert one(m, "iim_relay_pending_writes", what="notifications") == 0
            assert one(m, "iim_relay_outbox_write_error", error="") == 0
            assert one(m, "iim_relay_sent_directly_total") == 0

            # Values are read at scrape time: the guest hanging up shows at once.
            await a.drop()
            await wait_until(lambda: relay.channels[UUID_A].state != "connected", WAIT)
            m = await scrape(port)
            assert one(m, "iim_relay_channel_connected", instance_uuid=UUID_A) == 0
            await a.stop()
            await b.stop()
        # Shut down: the port is free again.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0

    asyncio.run(main())


def test_throttled_guest_shows_in_its_counters(state_dir) -> None:
    port = free_port()
    relay, settings = make_relay(state_dir, listen=f"127.0.0.1:{port}")
    settings = RelaySettings(
        host="compute-7", state_path=state_dir, metrics=settings.metrics,
        channels=ChannelSettings(socket_dir=settings.channels.socket_dir,
                                 max_bytes_per_second=1024, read_chunk=512))
    relay = Relay(settings, dict(DETECTOR), relay.outbox, FakeSender())

    async def main() -> None:
        async with Running(relay):
            g = await FakeGuest(settings.channels.socket_dir, UUID_A).start()
            await g.wait_connected()
            await g.send_raw(b"\x00" * 4096)  # garbage over the 1 KiB/s budget
            await wait_until(lambda: relay.channels[UUID_A].throttled_seconds > 0, WAIT)
            m = await scrape_when_up(port)
            assert one(m, "iim_relay_throttled_seconds_total", instance_uuid=UUID_A) > 0
            assert one(m, "iim_relay_throttled_total", budget="bytes") >= 1
            await g.stop()

    asyncio.run(main())


@pytest.mark.masakari
def test_delivery_latency_is_observed_when_masakari_accepts(
        state_dir, masakari, masakari_host) -> None:
    port = free_port()
    client = MasakariClient(session.Session(auth=noauth.NoAuth(endpoint=masakari.url)),
                            connect_timeout=2.0, read_timeout=10.0)
    relay, settings = make_relay(
        state_dir, listen=f"127.0.0.1:{port}", host=masakari_host,
        sender=lambda outbox: Sender(outbox, client, backoff_initial=0.05, backoff_max=0.5))
    started = time.time()

    async def main() -> None:
        async with Running(relay):
            g = await FakeGuest(settings.channels.socket_dir, UUID_A).start()
            await g.wait_connected()
            await g.send(HELLO, Failure(seq=1, check="web", reason="nginx exited"))
            await wait_until(lambda: relay.sender.counters.delivered == 1, 20.0)
            m = await scrape_when_up(port)
            assert one(m, "iim_relay_notifications_total", result="delivered") == 1
            assert one(m, "iim_relay_notifications_total", result="duplicate") == 0
            assert one(m, "iim_relay_notifications_total", result="queued") == 1
            assert one(m, "iim_relay_delivery_latency_seconds_count") == 1
            latency = one(m, "iim_relay_delivery_latency_seconds_sum")
            assert 0 < latency <= time.time() - started
            assert one(m, "iim_relay_delivery_latency_seconds_bucket", le="+Inf") == 1
            assert one(m, "iim_relay_outbox_depth") == 0
            assert one(m, "iim_relay_instance_state", instance_uuid=UUID_A, state="cooldown") == 1
            await g.stop()

    asyncio.run(main())
    assert len(masakari.notifications_for(UUID_A)) >= 1


def test_metrics_are_off_by_default(state_dir) -> None:
    conf = relay_conf.load([], default_config_files=[], conf=relay_conf.new_conf())
    assert relay_conf.settings_from(conf).metrics == MetricsSettings()
    assert MetricsSettings().address is None
    relay, settings = make_relay(state_dir)
    assert relay.metrics is None

    async def main() -> None:
        async with Running(relay):
            assert not relay._supervisor.running("metrics")
            listening = [c for c in psutil.Process().net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN]
            assert listening == []

    asyncio.run(main())


def test_a_busy_port_is_retried_while_the_relay_works(state_dir, caplog) -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    relay, settings = make_relay(state_dir, listen=f"127.0.0.1:{port}")

    async def main() -> None:
        async with Running(relay):
            await wait_until(lambda: "Cannot serve metrics" in caplog.text, WAIT)
            g = await FakeGuest(settings.channels.socket_dir, UUID_A).start()
            await g.wait_connected()  # channels work without the metrics endpoint
            blocker.close()
            m = await scrape_when_up(port)  # the retry binds once the port is free
            assert one(m, "iim_relay_channel_connected", instance_uuid=UUID_A) == 1
            await g.stop()

    with caplog.at_level(logging.ERROR, logger="host_relay.metrics"):
        try:
            asyncio.run(main())
        finally:
            blocker.close()
    assert "[metrics] listen (retrying in" in caplog.text


@pytest.mark.parametrize("value", [
    "9105", "localhost", ":9105", "::1:9105", "[::1:9105", "[zz]:9105", "999.0.0.1:9105",
    "my_host:9105", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http",
])
def test_malformed_listen_names_the_option_file_and_line(tmp_path, value) -> None:
    path = tmp_path / "relay.conf"
    path.write_text(textwrap.dedent(f"""\
        [DEFAULT]
        host = compute-7

        [metrics]
        listen = {value}
        """))
    with pytest.raises(relay_conf.ConfigError) as info:
        relay_conf.load(["--config-file", str(path)], default_config_files=[],
                        conf=relay_conf.new_conf())
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: [metrics] listen = {value} is not valid: ")
    assert "e.g." in problem and problem.endswith("(line 5)")


@pytest.mark.parametrize(("value", "address"), [
    ("127.0.0.1:9105", ("127.0.0.1", 9105)),
    (" [::1]:9105 ", ("::1", 9105)),
    ("localhost:9105", ("localhost", 9105)),
    ("", None),
])
def test_valid_listen_reaches_the_settings(tmp_path, value, address) -> None:
    path = tmp_path / "relay.conf"
    path.write_text(f"[metrics]\nlisten = {value}\n")
    conf = relay_conf.load(["--config-file", str(path)], default_config_files=[],
                           conf=relay_conf.new_conf())
    assert relay_conf.settings_from(conf).metrics.address == address


def test_settings_refuse_a_malformed_listen() -> None:
    with pytest.raises(ValueError, match="between 1 and 65535"):
        MetricsSettings(listen="127.0.0.1:0")
