"""One guest channel: read bytes, decode frames, feed the detector, hand on its outputs.

A :class:`ChannelConnection` owns the connection to one instance's UNIX socket
(``<socket_dir>/<uuid>.sock``, where QEMU listens).  It knows the instance only
by that file name; nothing the guest sends can change whom a notification is
about.  The detector is sans-I/O: this class hands it events, passes what it
returns to ``on_outputs`` (the relay renders them into log lines and writes
notifications and records through host_relay.store) and arms one loop timer
for the detector's next deadline.

On every (re)connect it writes one ``sync`` frame (never waiting for it to
drain): an agent of protocol 0.2 answers with its hello, its whole state and a
failure frame per failed check, so a relay that was not reading when the
failure happened still hears of it.  A 0.1.0 agent never reads it.

Each channel reads in large chunks under three budgets: token buckets on
bytes/s and frames/s of its own, and its fair share of the host-wide CPU
budget for decoding guest input (host_relay.budget).  Over any of them it
stops reading: the kernel buffer fills up and QEMU holds back that guest
only, while every other channel keeps its share of the loop.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import random
import time
from collections.abc import Iterable
from typing import Any, Callable, Optional

from host_relay.backoff import Backoff, BackoffPolicy
from host_relay.budget import DecodeBudget
from host_relay.log_budget import LogBudget
from host_relay.settings import ChannelSettings
from host_relay.transports import UNIX, Endpoint, is_closed_by_peer, open_channel
from iim_protocol.codec import Decoder, encode
from iim_protocol.messages import Heartbeat, Sync

LOG = logging.getLogger(__name__)

STATE_IDLE = "idle"
STATE_CONNECTING = "connecting"
STATE_CONNECTED = "connected"
STATE_BACKOFF = "backoff"
STATE_CLOSED = "closed"

# A connection that lasted this long (or carried a valid frame) resets backoff.
_STABLE_SECONDS = 10.0
# Reads of one channel per loop wake-up at most (each a whole chunk, within budget).
_CHUNKS_PER_WAKE = 8
# Retry delay after the detector itself raised in tick().
_TICK_RETRY = 1.0
SYNC_FRAME = encode(Sync())
# The budgets a channel can be held back by (status and metrics count each).
THROTTLE_BUDGETS = ("bytes", "frames", "cpu")


class TokenBucket:
    """``rate`` tokens per second, at most ``rate`` banked; may go into debt."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = float(rate)
        self.tokens = self.rate
        self._stamp = now

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def available(self, now: float) -> float:
        if self.unlimited:
            return float("inf")
        self.tokens = min(self.rate, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self.tokens

    def take(self, n: float, now: float) -> None:
        if not self.unlimited:
            self.available(now)
            self.tokens -= n

    def delay(self, now: float) -> float:
        """Seconds until at least one token is banked again (0 if there is one)."""
        tokens = self.available(now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


class ChannelConnection:
    """The relay's side of one instance's channel."""

    def __init__(
        self,
        instance_uuid: str,
        path: str,
        settings: ChannelSettings,
        detector: Any,
        on_outputs: Callable[[list], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        transport: str = UNIX,
        budget: Optional[DecodeBudget] = None,
        log_budget: Optional[LogBudget] = None,
    ) -> None:
        self.instance_uuid = instance_uuid
        self.path = path
        self.transport = transport  # unix socket, or a serial pty / TCP port (transports.py)
        self.detector = detector
        self._settings = settings
        self._on_outputs = on_outputs
        self._clock = clock
        self._rng = rng
        self.decoder = Decoder()
        self.counters: dict[str, int] = collections.Counter()
        self.throttled_seconds = 0.0
        now = clock()
        self._bytes = TokenBucket(settings.max_bytes_per_second, now)
        self._frames = TokenBucket(settings.max_frames_per_second, now)
        # This channel's share of the host-wide CPU budget for guest input
        # (one DecodeBudget per relay; a channel made alone gets its own).
        if budget is None:
            budget = DecodeBudget(settings.decode_budget, now)
        self.cpu = budget.account(now)
        # Lines this guest can cause, each kind once a minute (the instance's budget).
        self.log_budget = log_budget if log_budget is not None else LogBudget()
        self.state = STATE_IDLE
        self.state_since = now
        self.next_retry_at: Optional[float] = None
        self.last_error: Optional[str] = None
        self.last_message_at: Optional[float] = None
        self.last_heartbeat_at: Optional[float] = None
        self._closing = False
        self._connected = False
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_deadline: Optional[float] = None
        self._logged_errno: Optional[int] = None
        self._skipped_seen = 0

    # -- life cycle ---------------------------------------------------------

    async def run(self) -> None:
        """Connect, read, reconnect with backoff; returns only when cancelled."""
        s = self._settings
        backoff = Backoff(BackoffPolicy(s.reconnect_initial, s.reconnect_max,
                                        stable_after=_STABLE_SECONDS), self._rng)
        self._schedule()
        self.cpu.open()
        try:
            while True:
                backoff.started(self._clock())
                try:
                    healthy = await self._session()
                except Exception as exc:  # noqa: BLE001 - one channel never takes the relay down
                    LOG.exception("Channel of instance %s failed; it restarts with backoff",
                                  self.instance_uuid)
                    self.counters["errors"] += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    healthy = False
                if healthy:  # it carried a valid frame: start again from the first delay
                    backoff.reset()
                delay = backoff.failed(self._clock())
                self._set_state(STATE_BACKOFF)
                self.next_retry_at = self._clock() + delay
                await asyncio.sleep(delay)
                self.next_retry_at = None
        finally:
            self.cpu.close()
            self._set_state(STATE_CLOSED)
            self._cancel_timer()

    def close(self) -> None:
        """Stop acting on this channel's events (call before cancelling run()).

        The detector may outlive this connection (a re-created socket gets the
        same detector), so it is told the channel closed: a close is never a
        failure, and its hang timer must not run on a dead connection.
        """
        if self._connected and not self._closing:
            self._connected = False
            self._safe_detector_call("channel_closed")
        self._closing = True
        self._cancel_timer()

    async def _session(self) -> bool:
        """One connection; returns True if it carried a valid frame."""
        self._set_state(STATE_CONNECTING)
        try:
            endpoint = await open_channel(self.path, self.transport)
        except OSError as exc:
            self.counters["connect_failures"] += 1
            self.last_error = f"connect: {exc.strerror or exc}"
            self._log_connect_failure(exc)
            return False
        self._logged_errno = None
        self.counters["connects"] += 1
        self._set_state(STATE_CONNECTED)
        self._connected = True
        ok_before = self.decoder.stats.frames_ok
        self._log(logging.INFO, "connected", "Channel of instance %s connected",
                  self.instance_uuid)
        try:
            self._send_sync(endpoint)
            self._carry_out(self.detector.channel_connected(self._clock()))
            try:
                await self._read_loop(endpoint)
            except OSError as exc:
                # A peer that closes with our sync still unread resets the socket:
                # that is a hang-up like any other, not a failure of the channel.
                if not (is_closed_by_peer(exc)
                        or isinstance(exc, (ConnectionResetError, BrokenPipeError))):
                    raise
            self._log(logging.INFO, "closed", "Channel of instance %s closed by the other end",
                      self.instance_uuid)
        finally:
            endpoint.close()
            self._connected = False
            self.counters["disconnects"] += 1
            self.decoder.reset()  # a partial frame cannot continue on a new connection
            if not self._closing:
                self._safe_detector_call("channel_closed")
        return self.decoder.stats.frames_ok > ok_before

    def _send_sync(self, endpoint: Endpoint) -> None:
        """Ask the agent for its whole state; never waits (the guest may not read)."""
        try:
            written = endpoint.write(SYNC_FRAME)
        except OSError as exc:
            written = False
            LOG.debug("Channel of instance %s: sync not written: %s", self.instance_uuid, exc)
        if not written:  # a channel that cannot take 11 bytes now
            self.counters["sync_failures"] += 1
            return
        self.counters["syncs"] += 1

    def _log_connect_failure(self, exc: OSError) -> None:
        """Each kind of failure once per run of failures, not once per retry."""
        if exc.errno == self._logged_errno:
            LOG.debug("Channel of instance %s: cannot connect to %s: %s",
                      self.instance_uuid, self.path, exc)
            return
        self._logged_errno = exc.errno
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            LOG.error("Channel of instance %s: out of file descriptors (%s): this instance "
                      "is NOT watched; raise the relay's open-file limit (systemd: "
                      "LimitNOFILE=)", self.instance_uuid, exc)
        else:
            LOG.warning("Channel of instance %s: cannot connect to %s: %s (retrying with "
                        "backoff)", self.instance_uuid, self.path, exc)

    # -- reading ------------------------------------------------------------

    async def _read_loop(self, endpoint: Endpoint) -> None:
        chunk = self._settings.read_chunk
        while True:
            wait = self._hold_back(self._clock())
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await endpoint.readable()
            # Whatever the kernel holds, a whole chunk at a time, and while the
            # budgets allow, a few chunks per wake-up: a flooding guest costs
            # its decoding, not a loop turn per few bytes.  The read system
            # calls, decoding and the detector are all charged to it.
            for _ in range(_CHUNKS_PER_WAKE):
                cpu = time.thread_time()
                try:
                    data = endpoint.read(chunk)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    return
                self._consume(data, self._clock())
                now = self._clock()
                self.cpu.charge(time.thread_time() - cpu, now)
                if len(data) < chunk or self._hold_back(now) > 0:
                    break

    def _hold_back(self, now: float) -> float:
        """Seconds this channel must not be read: the longest wait of its three budgets.

        Each may go into debt (a chunk is decoded whole, then paid for), so a
        flooding channel waits about a chunk's worth at a time.
        """
        waits = (("bytes", self._bytes.delay(now)), ("frames", self._frames.delay(now)),
                 ("cpu", self.cpu.wait(now)))
        which, wait = max(waits, key=lambda w: w[1])
        if wait > 0:
            self._throttled(now, which, wait)
        return wait

    def _consume(self, data: bytes, now: float) -> None:
        """Decode ``data`` and hand its messages to the detector."""
        stats = self.decoder.stats
        self._bytes.take(len(data), now)
        ok_before, bad_before = stats.frames_ok, stats.frames_rejected
        messages = self.decoder.feed(data)
        bad = stats.frames_rejected
        self._frames.take(stats.frames_ok - ok_before + bad - bad_before, now)
        if bad != bad_before or stats.bytes_skipped != self._skipped_seen:
            self._bad_input(now)
        for msg in messages:
            self.last_message_at = now
            if isinstance(msg, Heartbeat):
                self.last_heartbeat_at = now
                self.counters["heartbeats"] += 1
            self._carry_out(self.detector.message(msg, now))

    def throttle_counts(self) -> dict[str, Any]:
        """Times held back by each budget, seconds held back, CPU charged (status, metrics)."""
        return {**{k: self.counters[f"throttled_{k}"] for k in THROTTLE_BUDGETS},
                "cpu_seconds": round(self.cpu.cpu_total, 3),
                "seconds": round(self.throttled_seconds, 3)}

    def _log(self, level: int, kind: str, msg: str, *args: Any) -> None:
        self.log_budget.log(LOG, level, kind, self._clock(), msg, *args)

    def _bad_input(self, now: float) -> None:
        """Rejected input is counted always and logged at most once a minute."""
        stats = self.decoder.stats
        self._skipped_seen = stats.bytes_skipped
        self.log_budget.log(
            LOG, logging.WARNING, "bad_input", now,
            "Instance %s sent input that is not iim frames: %d bytes skipped, %d frames "
            "rejected (%s) so far; an outdated agent or another program writing to the "
            "port would do this (see `iim-relay status`)",
            self.instance_uuid, stats.bytes_skipped, stats.frames_rejected,
            ", ".join(f"{k}={v}" for k, v in sorted(stats.rejected.items())) or "none",
        )

    def _throttled(self, now: float, which: str, wait: float) -> None:
        self.counters[f"throttled_{which}"] += 1
        self.throttled_seconds += wait
        self.log_budget.log(
            LOG, logging.WARNING, "throttled", now,
            "Channel of instance %s is over its %s budget; reading paused "
            "(throttled %d times so far)",
            self.instance_uuid, which,
            sum(self.counters[f"throttled_{k}"] for k in THROTTLE_BUDGETS),
        )

    # -- detector outputs and timer -----------------------------------------

    def domain_state(self, state: str) -> None:
        """Pass the domain's state (from libvirt) to the detector."""
        if not self._closing:
            self._carry_out(self.detector.domain_state(state, self._clock()))

    def detector_call(self, call: Callable[[float], Iterable[Any]]) -> None:
        """Run ``call(now)`` on the detector (the operator's pause or resume, from
        host_relay.maintenance), carry out its outputs and set the timer again."""
        self._carry_out(call(self._clock()))

    def _safe_detector_call(self, method: str) -> None:
        try:
            self._carry_out(getattr(self.detector, method)(self._clock()))
        except Exception:  # noqa: BLE001 - logged; the channel goes on
            LOG.exception("Detector of instance %s failed in %s", self.instance_uuid, method)

    def _carry_out(self, outputs: Iterable[Any]) -> None:
        try:
            if outputs:
                self._on_outputs(list(outputs))
        finally:
            self._schedule()

    def _schedule(self) -> None:
        if self._closing:
            self._cancel_timer()
            return
        deadline = self.detector.next_deadline()
        if deadline is None:
            self._cancel_timer()
            return
        if self._timer is not None and self._timer_deadline <= deadline:
            # Every heartbeat pushes the hang deadline later; moving the loop
            # timer each time was a tenth of the relay's CPU at 2,000
            # instances.  An earlier timer is kept: when it fires, tick() does
            # nothing before the real deadline and the timer is set again.
            return
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - self._clock())
        self._timer_deadline = deadline
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        if self._closing:
            return
        try:
            self._carry_out(self.detector.tick(self._clock()))
        except Exception:  # noqa: BLE001 - logged and retried; other channels go on
            LOG.exception("Detector of instance %s failed in tick; retrying in %.1fs",
                          self.instance_uuid, _TICK_RETRY)
            self._cancel_timer()
            self._timer = asyncio.get_running_loop().call_later(_TICK_RETRY, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_deadline = None

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_since = self._clock()
