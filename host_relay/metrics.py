"""Prometheus metrics of the running relay, served at ``http://<[metrics] listen>/metrics``.

How it works
------------
Nothing on the relay's hot path changes for metrics.  At scrape time
:class:`RelayCollector` asks the event loop for the relay's one status model
(``Relay.status()``, host_relay.status: what ``iim-relay status`` shows) and
turns it into a plain :class:`Reading`, so the values are never stale, never
read half-updated, and never disagree with the control socket.  The outbox is
read in its own thread with a deadline; a disk that does not answer makes the
outbox gauges go missing, never the scrape hang.  Two histograms
are the only thing observed as it happens: the detector's decision to the
durable outbox entry (``ChannelConnection(on_queued=)``), and that entry to
Masakari's answer (``Sender.on_delivered``).

The HTTP server is prometheus_client's own, in its threads, with a registry
of its own (never the global one).  A scrape costs the loop only the
reading (a few microseconds per instance, see :func:`read_relay`); turning
some 30,000 series into text for 2,000 instances happens in the server's
thread.  If the loop does not answer within ``READ_TIMEOUT`` the scrape
fails (HTTP 500): Prometheus shows the relay as down rather than serving
numbers that no longer move.

Labels stay bounded: per instance only ``instance_uuid`` (plus ``state``
on the one ``iim_relay_instance_state`` series an instance has); everything
else is per host, labelled by a fixed set of values.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import threading
from collections.abc import Iterator
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import iim_protocol
from host_relay.backoff import Backoff, BackoffPolicy, retry
from host_relay.channel import STATE_CONNECTED
from host_relay.detector import State
from host_relay.witnesses import GUEST_AGENT, IO_ERROR, PANIC, PROGRESS, WATCHDOG

LOG = logging.getLogger(__name__)

#: The witness decisions served even before any was made (a fixed set of series).
WITNESS_SERIES = dict.fromkeys(
    [f"confirmed_hang:{w}" for w in (PANIC, WATCHDOG, IO_ERROR, GUEST_AGENT, PROGRESS)]
    + [f"agent_lost:{GUEST_AGENT}", "no_witness:none"], 0)

# The loop answers a reading in milliseconds; one that takes this long is stalled.
READ_TIMEOUT = 5.0
# A port in use (another relay, a leftover process) is retried after 1 s, then less
# and less often, at least once a minute.
BIND_RETRY = BackoffPolicy(initial=1.0, maximum=60.0, stable_after=None)

# Queue to Masakari's 202: a round trip is well under a second; retries during an
# API outage stretch it to minutes or hours, and those are what operators look for.
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0, 1800.0, 3600.0)
# Detector decision to durable outbox entry: an sqlite commit plus loop lateness.
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclasses.dataclass
class InstanceReading:
    uuid: str
    detector_state: str
    connected: bool
    heartbeats: int
    bytes_skipped: int
    frames_rejected: int
    throttled_seconds: float
    log_suppressed: int
    paused_by: tuple[str, ...] = ()  # "guest", "host": whose pauses hold now


@dataclasses.dataclass
class Reading:
    """What one scrape reports, copied out of the status model as plain values."""

    host: str
    instances: list[InstanceReading]
    rejected: dict[str, int]  # by reason, summed over the instances
    throttled: dict[str, int]  # times a channel paused, by budget ("bytes", "frames", "cpu")
    sender: dict[str, int]
    outbox: Optional[dict[str, Any]]  # None: the outbox could not be read
    restarts: dict[str, int]  # by part, every channel counted as "channel"
    detectors: dict[str, dict[str, int]]  # notified/suppressed/ignored, by kind
    store: Any  # host_relay.store.WriterStatus
    guard: Any = None  # host_relay.silence_guard.GuardStatus, None without witnesses


def reading_from(status: Any) -> Reading:
    """The metrics' view of a :class:`host_relay.status.RelayStatus`."""
    instances = []
    rejected: collections.Counter[str] = collections.Counter()
    throttled = {"bytes": 0, "frames": 0, "cpu": 0}
    for uuid, inst in status.instances.items():
        if inst.channel is None:
            continue  # known to libvirt only: no channel series
        det = inst.detector
        state = getattr(det, "state", None)
        instances.append(InstanceReading(
            uuid=uuid,
            detector_state=str(getattr(state, "value", state or "unknown")),
            connected=inst.channel.state == STATE_CONNECTED,
            heartbeats=inst.heartbeats,
            bytes_skipped=inst.decoder.get("bytes_skipped", 0),
            frames_rejected=inst.decoder.get("frames_rejected", 0),
            throttled_seconds=inst.throttle.get("seconds", 0.0),
            log_suppressed=sum(inst.log_suppressed.values()),
            paused_by=tuple(origin for key, origin in (("pause", "guest"), ("host_pause", "host"))
                            if getattr(det, key, None) is not None),
        ))
        rejected.update(inst.decoder.get("rejected", {}))
        for budget in throttled:
            throttled[budget] += inst.throttle.get(budget, 0)
    outbox = None
    if status.outbox is not None and status.outbox.error is None:
        outbox = dataclasses.asdict(status.outbox)
    restarts: collections.Counter[str] = collections.Counter()
    for part, count in status.restarts.items():
        restarts["channel" if part.startswith("channel ") else part] += count
    guard = getattr(status, "silence_guard", None)
    return Reading(status.host, instances, dict(rejected), throttled, dict(status.sender),
                   outbox, dict(restarts), status.detectors, status.store,
                   guard if hasattr(guard, "engaged") else None)


async def read_relay(relay: Any) -> Reading:
    """Take a reading of ``relay``; run on the relay's loop."""
    return reading_from(await relay.status())


class RelayCollector:
    """Builds the relay's metric families from a :class:`Reading` taken on the loop."""

    def __init__(self, relay: Any, loop: asyncio.AbstractEventLoop, queued: Any) -> None:
        self._relay = relay
        self._loop = loop
        self._queued = queued  # () -> notifications queued since start

    def _read(self) -> Reading:
        future = asyncio.run_coroutine_threadsafe(read_relay(self._relay), self._loop)
        try:
            return future.result(READ_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            LOG.error("Metrics: the relay's event loop did not answer within %.0fs; "
                      "failing this scrape", READ_TIMEOUT)
            raise

    def collect(self) -> Iterator[Metric]:
        r = self._read()
        yield from _instance_families(r)
        yield from _host_families(r, self._queued())


def _instance_families(r: Reading) -> Iterator[Metric]:
    label = ["instance_uuid"]
    state = GaugeMetricFamily(
        "iim_relay_instance_state",
        "Detector state of each instance: 1 on the series of its current state "
        "(unknown, armed, suspect, agent_lost, failed, cooldown, paused, departed).",
        labels=["instance_uuid", "state"])
    connected = GaugeMetricFamily(
        "iim_relay_channel_connected",
        "1 while the relay is connected to the instance's guest channel socket.", labels=label)
    heartbeats = CounterMetricFamily(
        "iim_relay_heartbeats", "Heartbeat frames received from the instance's agent "
        "(since its channel socket appeared).", labels=label)
    skipped = CounterMetricFamily(
        "iim_relay_bytes_skipped", "Bytes from the guest skipped while looking for a valid "
        "frame (garbage on the channel).", labels=label)
    rejected = CounterMetricFamily(
        "iim_relay_frames_rejected", "Frames from the guest rejected (bad version, CRC, "
        "size or content).", labels=label)
    throttled = CounterMetricFamily(
        "iim_relay_throttled_seconds", "Seconds the relay paused reading the channel because "
        "the guest sent over its bytes/frames budget or its share of the CPU budget.",
        labels=label)
    suppressed = CounterMetricFamily(
        "iim_relay_log_lines_suppressed", "Log lines about the instance held back by its "
        "log budget (each kind at most once a minute).", labels=label)
    for i in r.instances:
        state.add_metric([i.uuid, i.detector_state], 1)
        connected.add_metric([i.uuid], 1 if i.connected else 0)
        heartbeats.add_metric([i.uuid], i.heartbeats)
        skipped.add_metric([i.uuid], i.bytes_skipped)
        rejected.add_metric([i.uuid], i.frames_rejected)
        throttled.add_metric([i.uuid], i.throttled_seconds)
        suppressed.add_metric([i.uuid], i.log_suppressed)
    yield from (state, connected, heartbeats, skipped, rejected, throttled, suppressed)


def _host_families(r: Reading, queued: int) -> Iterator[Metric]:
    info = GaugeMetricFamily("iim_relay_info", "The relay's version and host name (always 1).",
                             labels=["version", "host"])
    info.add_metric([iim_protocol.__version__, r.host], 1)
    yield info
    by_state = collections.Counter(i.detector_state for i in r.instances)
    instances = GaugeMetricFamily(
        "iim_relay_instances", "Instances with a channel socket, by detector state.",
        labels=["state"])
    for name in sorted({s.value for s in State} | set(by_state)):
        instances.add_metric([name], by_state.get(name, 0))
    yield instances
    paused = GaugeMetricFamily(
        "iim_relay_paused", "Instances paused now (no notification for them), by whose pause: "
        "guest (the agent's) or host (`iim-relay pause`); one paused by both counts in both.",
        labels=["origin"])
    for origin in ("guest", "host"):
        paused.add_metric([origin], sum(origin in i.paused_by for i in r.instances))
    yield paused
    reasons = CounterMetricFamily(
        "iim_relay_frames_rejected_by_reason", "Frames rejected, by reason, summed over the "
        "instances the relay has now.", labels=["reason"])
    for reason, count in sorted(r.rejected.items()):
        reasons.add_metric([reason], count)
    yield reasons
    throttled = CounterMetricFamily(
        "iim_relay_throttled", "Times a channel's reading was paused, by the budget it "
        "exceeded, summed over the instances the relay has now.", labels=["budget"])
    for budget, count in sorted(r.throttled.items()):
        throttled.add_metric([budget], count)
    yield throttled
    s = r.sender
    notifications = CounterMetricFamily(
        "iim_relay_notifications", "Notifications since the relay started, by result: queued "
        "in the outbox, delivered (accepted by Masakari, duplicates included), duplicate "
        "(Masakari had it already), dead (refused for good, kept as a dead letter).",
        labels=["result"])
    notifications.add_metric(["queued"], queued)
    for result, key in (("delivered", "delivered"), ("duplicate", "duplicates"),
                        ("dead", "dead")):
        notifications.add_metric([result], s.get(key, 0))
    yield notifications
    yield CounterMetricFamily("iim_relay_delivery_retries", "Delivery attempts that failed "
                              "transiently and were scheduled again.", value=s.get("retries", 0))
    yield CounterMetricFamily("iim_relay_sender_errors", "Outbox (sqlite) errors in the "
                              "sender loop.", value=s.get("errors", 0))
    if r.outbox is not None:
        o = r.outbox
        yield GaugeMetricFamily("iim_relay_outbox_depth", "Notifications queued in the outbox, "
                                "not yet accepted by Masakari.", value=o["depth"])
        yield GaugeMetricFamily("iim_relay_outbox_oldest_queued_age_seconds", "Age of the oldest "
                                "queued notification (0 when none).", value=o["oldest_queued_age"])
        yield GaugeMetricFamily("iim_relay_outbox_retrying", "Queued notifications that failed "
                                "at least once.", value=o["retrying"])
        yield GaugeMetricFamily("iim_relay_outbox_dead_letters", "Notifications Masakari refused "
                                "for good, kept until an operator re-queues them.",
                                value=o["dead"])
    yield from _detector_families(r)
    yield from _store_families(r.store)
    restarts = CounterMetricFamily(
        "iim_relay_part_restarts", "Times a part of the relay crashed or stopped and was "
        "restarted (all channels count as part=\"channel\").", labels=["part"])
    for part, count in sorted(r.restarts.items()):
        restarts.add_metric([part], count)
    yield restarts


def _detector_families(r: Reading) -> Iterator[Metric]:
    helps = {
        "notified": ("iim_relay_detector_notified", "Notifications the detectors decided, by "
                     "kind, summed over the instances the relay has now.", "kind"),
        "suppressed": ("iim_relay_detector_suppressed", "Failures the detectors did not notify, "
                       "by why (cooldown, storm_cap, paused, open_incident, domain_*).", "why"),
        "ignored": ("iim_relay_detector_ignored", "Inputs the detectors did not act on, by "
                    "reason.", "reason"),
    }
    for key, (name, text, label) in helps.items():
        family = CounterMetricFamily(name, text, labels=[label])
        for value, count in sorted((r.detectors.get(key) or {}).items()):
            family.add_metric([str(value)], count)
        yield family
    decisions = CounterMetricFamily(
        "iim_relay_witness_decisions", "What the host's witnesses decided about silent "
        "instances, by outcome (confirmed_hang, agent_lost, no_witness) and the witness that "
        "decided (panic, watchdog, io_error, guest_agent, progress; none), summed over the "
        "instances the relay has now.", labels=["outcome", "witness"])
    counts = collections.Counter(WITNESS_SERIES)
    counts.update(r.detectors.get("witness") or {})
    for key, count in sorted(counts.items()):
        outcome, _, witness = key.partition(":")
        decisions.add_metric([outcome, witness], count)
    yield decisions
    g = r.guard
    yield GaugeMetricFamily(
        "iim_relay_silence_guard_engaged", "1 while the host-wide silence guard holds hang "
        "notifications (many instances silent at once: the host or the relay is the likely "
        "cause); 0 otherwise or without witnesses.", value=1 if g is not None and g.engaged else 0)
    yield GaugeMetricFamily(
        "iim_relay_hangs_held", "Hang notifications the silence guard holds now (released on "
        "their own witness or when the guard lets go).", value=g.held if g is not None else 0)


def _store_families(store: Any) -> Iterator[Metric]:
    if store is None:
        return
    pending = GaugeMetricFamily(
        "iim_relay_pending_writes", "Notifications and detector records decided but not yet "
        "on disk (the outbox write is under way or failing).", labels=["what"])
    pending.add_metric(["notifications"], store.pending_notifications)
    pending.add_metric(["records"], store.pending_records)
    yield pending
    problem = store.disk_problem
    disk = GaugeMetricFamily(
        "iim_relay_outbox_write_error", "1 while the outbox cannot be written, labelled with "
        "the error (ENOSPC, EIO, EROFS, FROZEN, ...); see `iim-relay status` for the fix.",
        labels=["error"])
    disk.add_metric([problem.errno_name if problem else ""], 1 if problem else 0)
    yield disk
    yield CounterMetricFamily("iim_relay_outbox_write_failures", "Outbox commits that failed "
                              "and were retried.", value=store.commit_failures)
    yield CounterMetricFamily("iim_relay_sent_directly", "Notifications sent straight to "
                              "Masakari because the outbox could not be written in time.",
                              value=store.sent_directly)


def _stop_late_server(start: asyncio.Future) -> None:
    if start.cancelled() or start.exception() is not None:
        return
    server, _thread = start.result()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    threading.Thread(target=stop, name="metrics-stop", daemon=True).start()


class RelayMetrics:
    """The relay's registry, its two histograms, and the HTTP server serving them."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.delivery_latency = Histogram(
            "iim_relay_delivery_latency_seconds",
            "Seconds from the relay queueing a notification (when the detector decided) to "
            "Masakari accepting it (202, or 409 duplicate); retries included.",
            buckets=DELIVERY_BUCKETS, registry=self.registry)
        self.detection_to_queue = Histogram(
            "iim_relay_detection_to_queue_seconds",
            "Seconds from the detector establishing a failure (the failure frame, or the "
            "missed-heartbeat deadline) to the notification being durably in the outbox.",
            buckets=QUEUE_BUCKETS, registry=self.registry)
        self._queued = 0
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: Optional[threading.Thread] = None

    # -- observers (called on the loop) -----------------------------------------

    def observe_delivery(self, entry: Any, seconds: float) -> None:
        self.delivery_latency.observe(max(0.0, seconds))

    def observe_queued(self, notify: Any, seconds: float) -> None:
        with self._lock:
            self._queued += 1
        self.detection_to_queue.observe(max(0.0, seconds))

    def queued(self) -> int:
        with self._lock:
            return self._queued

    # -- serving -----------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    async def serve(self, relay: Any) -> None:
        """Serve until cancelled; a port in use is logged and retried, never fatal.

        Metrics are for the operator: failure detection and delivery must go on
        without them.  The server binds in a thread, since binding resolves the
        address (http.server looks up the host's FQDN), which may block.
        """
        collector = RelayCollector(relay, asyncio.get_running_loop(), self.queued)
        self.registry.register(collector)
        try:
            self._server, self._thread = await retry(
                self._start_server, Backoff(BIND_RETRY), retry_on=(OSError,),
                on_retry=self._cannot_bind)
            LOG.info("Serving Prometheus metrics on %s", self.url)
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.registry.unregister(collector)
            await self._stop_server()

    def _cannot_bind(self, exc: BaseException, delay: float) -> None:
        LOG.error("Cannot serve metrics on %s: %s; free the port or change "
                  "[metrics] listen (retrying in %.0fs)", self.url, exc, delay)

    async def _start_server(self) -> tuple[Any, threading.Thread]:
        host, port = self.address
        start = asyncio.ensure_future(
            asyncio.to_thread(start_http_server, port, addr=host, registry=self.registry))
        try:
            return await asyncio.shield(start)
        except asyncio.CancelledError:
            start.add_done_callback(_stop_late_server)  # it may still come up: stop it then
            raise

    async def _stop_server(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)  # waits for serve_forever to return
        server.server_close()
        if thread is not None:
            thread.join(READ_TIMEOUT)
        LOG.info("Stopped serving metrics on %s", self.url)
