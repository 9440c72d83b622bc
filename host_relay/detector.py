"""Per-instance failure detector of the host relay: sans-I/O.

Theory of operation
-------------------
One :class:`Detector` per instance turns what the relay sees - the guest's
messages, its channel opening and closing, the domain's state from libvirt -
into outputs: :class:`Notify` (queue a Masakari notification), :class:`Log`
and :class:`Metric`.  Like h11's ``Connection`` it does no I/O and reads no
clock: every call takes ``now`` (monotonic seconds) and returns a list of
outputs, and :meth:`Detector.next_deadline` says when the caller must call
:meth:`Detector.tick` next.  Timers that are due are always run first, at
their own deadline, so a late call gives the same result as an on-time tick
followed by the input (and the outputs say when things happened).

Every transition is one row of ``TABLE`` in ``detector_table.py``, keyed by
(state, input); the ``_on_*`` methods below are its handlers.  Orthogonal
facts (channel up, domain state, the guest's pause end, the cooldown end,
the last liveness) are plain data the handlers and ``_pending`` read.

What notifies, and only this:

* a ``failure`` frame while ARMED/SUSPECT (also during min_uptime: it is
  explicit) and the domain is running -> ``process_failure``;
* ``missed_heartbeats`` x interval without a heartbeat while ARMED/SUSPECT,
  channel up, domain running, and min_uptime after hello passed ->
  ``guest_hang``.  The silence is measured from the last heartbeat, hello,
  pause end, or the domain's return to running, whichever is latest.

Both go through the restart-storm cap (at most ``max_notifications`` in any
sliding ``notification_window``; a dropped one leaves the detector FAILED)
and then start the cooldown (COOLDOWN, then FAILED until there is evidence
the incident is over, or ARMED if there already is).

Decisions the issue left open:

* The domain state starts as RUNNING (constructor argument ``domain``):
  without libvirt the relay never calls :meth:`Detector.domain_state`.
  ``DomainState.UNKNOWN`` counts as running.  Returning to running from a
  pause or migration restarts the heartbeat timer fresh; a domain that stops
  (SHUTDOWN/SHUTOFF/CRASHED) ends the incarnation: only a new hello arms.
* A closed channel disarms (UNKNOWN) but keeps the last hello's interval, so
  after a reconnect any guest message (a heartbeat, say) re-arms without a
  new hello; min_uptime is not applied again (same boot).  A guest that says
  nothing at all after a reconnect is not watched: ``snapshot`` shows it as
  UNKNOWN.
* A hello cancels a guest pause (the agent re-sends the remaining pause after
  every hello) and ends any open incident (the instance was restarted).
* A hang deadline found more than ``late_tolerance`` seconds late means the
  relay itself stalled (its heartbeats may still sit unread in the socket):
  the detector re-checks one interval later instead of notifying, so a busy
  host does not restart all its instances.
* A failure frame while the domain is paused or migrating is dropped (logged
  and counted): Masakari cannot recover an instance in that state, and the
  agent reports a still-failed check again after it reconnects.
* Check states in heartbeats are informational (status only); only a
  ``failure`` frame reports a process failure.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import math
from typing import Any, Optional, Union

from host_relay.detector_config import DetectorConfig  # re-exported: its home moved
from host_relay.detector_table import TABLE, WATCHING, Input, State
from iim_protocol.messages import (
    Failure,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    Pause,
    Recovered,
    Resume,
)

__all__ = [
    "Detector",
    "DetectorConfig",
    "DomainState",
    "Log",
    "Metric",
    "Notify",
    "Output",
    "State",
]

#: Longest reason put into a notification or log line (characters).
MAX_REASON_CHARS = 255


class DomainState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    MIGRATING = "migrating"
    UNKNOWN = "unknown"


_DOMAIN_RUNS = frozenset({DomainState.RUNNING, DomainState.UNKNOWN})
_DOMAIN_HELD = frozenset({DomainState.PAUSED, DomainState.MIGRATING})


@dataclasses.dataclass(frozen=True)
class Notify:
    """Queue a Masakari notification for this instance."""

    kind: str  # "process_failure" | "guest_hang"
    instance_uuid: str
    reason: str
    at: float  # monotonic time the failure was established


@dataclasses.dataclass(frozen=True)
class Log:
    """A log record for the caller to emit: ``logger.log(level, message, *args)``."""

    level: int
    message: str
    args: tuple = ()


@dataclasses.dataclass(frozen=True)
class Metric:
    """Increment counter ``name`` by ``value``; ``labels`` is a tuple of (key, value) pairs."""

    name: str
    value: float = 1.0
    labels: tuple = ()


Output = Union[Notify, Log, Metric]

PROCESS_FAILURE = "process_failure"
GUEST_HANG = "guest_hang"

_INPUT_OF = {
    Hello: Input.HELLO,
    Heartbeat: Input.HEARTBEAT,
    Failure: Input.FAILURE,
    Recovered: Input.RECOVERED,
    Goodbye: Input.GOODBYE,
    Pause: Input.PAUSE,
    Resume: Input.RESUME,
}
_NEG_INF = float("-inf")


def _clean(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Guest text for a log line or notification: printable only, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass
class _Incident:
    kind: str
    check: Optional[str]
    reason: str
    at: float
    notified: bool
    open: bool = True


class Detector:
    """Failure detector for one instance.  See the module docstring."""

    def __init__(
        self,
        instance_uuid: str,
        config: DetectorConfig,
        now: float,
        *,
        domain: DomainState = DomainState.RUNNING,
    ) -> None:
        self.instance_uuid = instance_uuid
        self.config = config
        self._now = self._finite(now)
        self._state = State.UNKNOWN
        self._since = self._now
        self._out: list[Output] = []
        # Orthogonal facts.
        self._channel_up = False
        self._domain = domain
        # This incarnation of the agent (from its hello).
        self._interval: Optional[float] = None
        self._hello_at: Optional[float] = None
        self._watch_from = _NEG_INF  # hello + min_uptime
        self._agent_version: Optional[str] = None
        self._boot_id: Optional[str] = None
        self._hello_checks: tuple[str, ...] = ()
        # Liveness.
        self._base = self._now  # the silence is measured from here
        self._hold_until = _NEG_INF  # re-check after a stalled relay
        self._last_heartbeat_at: Optional[float] = None
        self._last_seq: Optional[int] = None
        self._checks: dict[str, str] = {}
        # Pause, incident, cooldown, storm cap.
        self._paused_until: Optional[float] = None
        self._pause_reason = ""
        self._incident: Optional[_Incident] = None
        self._cooldown_until: Optional[float] = None
        self._departed_in_cooldown = False
        self._sent: collections.deque[float] = collections.deque()
        self._storm_capped = 0

    # ------------------------------------------------------------------ API

    @property
    def state(self) -> State:
        return self._state

    def channel_connected(self, now: float) -> list[Output]:
        def fact() -> None:
            self._channel_up = True
            self._log(logging.INFO, "instance %s: channel connected", self.instance_uuid)

        return self._run(now, Input.CONNECTED, None, fact)

    def channel_closed(self, now: float) -> list[Output]:
        def fact() -> None:
            self._channel_up = False
            self._log(
                logging.INFO,
                "instance %s: channel closed (not a failure by itself; "
                "hang detection waits for the guest to speak again)",
                self.instance_uuid,
            )

        return self._run(now, Input.CLOSED, None, fact)

    def message(self, msg: Message, now: float) -> list[Output]:
        inp = _INPUT_OF.get(type(msg))
        if inp is None:
            return self._run(now, None, None, lambda: self._ignore("unknown_message", "unknown"))

        def fact() -> None:
            if not self._channel_up:
                # Frames only arrive over an open channel: the caller did not
                # tell us it connected.  Believe the frame.
                self._channel_up = True
                self._metric("iim_detector_implicit_connect_total")
                self._log(
                    logging.DEBUG,
                    "instance %s: %s on a channel not marked connected; treating it as connected",
                    self.instance_uuid, inp.value,
                )
                self._dispatch(Input.CONNECTED, self._now, None)

        return self._run(now, inp, msg, fact)

    def domain_state(self, state: DomainState, now: float) -> list[Output]:
        old = self._domain
        if state in _DOMAIN_RUNS:
            inp = None if old in _DOMAIN_RUNS else Input.DOMAIN_UP
        elif state in _DOMAIN_HELD:
            inp = Input.DOMAIN_HOLD
        else:
            inp = Input.DOMAIN_STOP

        def fact() -> None:
            if state is old:
                self._ignore("domain", "unchanged")
                return
            self._domain = state
            self._log(
                logging.INFO, "instance %s: domain is %s (was %s)",
                self.instance_uuid, state.value, old.value,
            )

        if state is old:
            inp = None
        return self._run(now, inp, None, fact)

    def tick(self, now: float) -> list[Output]:
        return self._run(now, None, None, None)

    def next_deadline(self) -> Optional[float]:
        pending = self._pending()
        return None if pending is None else pending[0]

    def snapshot(self, now: float) -> dict[str, Any]:
        """Status for ``iim-relay status``; JSON-able.  Runs no timers: call tick first."""
        now = max(self._finite(now), self._now)
        cfg = self.config
        window_start = now - cfg.notification_window
        incident = self._incident
        hb = self._last_heartbeat_at
        counts = collections.Counter(self._checks.values())
        return {
            "instance_uuid": self.instance_uuid,
            "state": self._state.value,
            "since": self._since,
            "for_seconds": now - self._since,
            "channel": "connected" if self._channel_up else "closed",
            "domain_state": self._domain.value,
            "hang_detection": self._hang_detection(now),
            "next_deadline": self.next_deadline(),
            "heartbeat_interval": self._interval,
            "hang_after_seconds": (
                None if self._interval is None else self._interval * cfg.missed_heartbeats
            ),
            "last_heartbeat_age": None if hb is None else now - hb,
            "last_heartbeat_seq": self._last_seq,
            "silent_for": now - self._base if self._state in WATCHING else None,
            "checks": dict(sorted(self._checks.items())),
            "checks_summary": {k: counts.get(k, 0) for k in ("ok", "starting", "failed")},
            "last_failure": None if incident is None else {
                "kind": incident.kind,
                "check": incident.check,
                "reason": incident.reason,
                "at": incident.at,
                "age": now - incident.at,
                "notified": incident.notified,
                "open": incident.open,
            },
            "paused_until": self._paused_until,
            "pause_reason": self._pause_reason if self._paused_until is not None else None,
            "cooldown_until": self._cooldown_until if self._state is State.COOLDOWN else None,
            "notifications_in_window": sum(1 for t in self._sent if t > window_start),
            "max_notifications": cfg.max_notifications,
            "notification_window": cfg.notification_window,
            "storm_capped": self._storm_capped,
            "guest_reported": {
                "informational": True,  # said by the guest, never trusted for identity
                "agent_version": self._agent_version,
                "boot_id": self._boot_id,
                "checks": list(self._hello_checks),
            },
        }

    # ------------------------------------------------------------ machinery

    @staticmethod
    def _finite(now: float) -> float:
        now = float(now)
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number, not {now!r}")
        return now

    def _run(self, now, inp, msg, fact) -> list[Output]:
        self._out = out = []
        now = self._finite(now)
        if now < self._now:
            self._metric("iim_detector_clock_backwards_total")
            self._log(
                logging.WARNING,
                "instance %s: time went backwards by %.3fs; using the last time seen",
                self.instance_uuid, self._now - now,
            )
            now = self._now
        self._now = now
        self._advance(now)
        if fact is not None:
            fact()
        if inp is not None:
            self._dispatch(inp, now, msg)
        self._advance(now)
        self._out = []
        return out

    def _advance(self, now: float) -> None:
        # Each timer handler leaves its state or moves its deadline past now,
        # so this terminates; the bound only guards against a future bug.
        for _ in range(32):
            pending = self._pending()
            if pending is None or pending[0] > now:
                return
            self._dispatch(pending[1], pending[0], None)
        self._log(logging.ERROR, "instance %s: detector timers did not settle", self.instance_uuid)

    def _pending(self) -> Optional[tuple[float, Input]]:
        """The next timer: (deadline, input), or None."""
        state = self._state
        if state is State.PAUSED:
            assert self._paused_until is not None
            return self._paused_until, Input.PAUSE_EXPIRED
        if state is State.COOLDOWN:
            assert self._cooldown_until is not None
            return self._cooldown_until, Input.COOLDOWN_EXPIRED
        if state not in (State.ARMED, State.SUSPECT) or self._hold_reason() is not None:
            return None
        assert self._interval is not None
        cfg = self.config
        floor = max(self._watch_from, self._hold_until)
        hang = max(self._base + cfg.missed_heartbeats * self._interval, floor)
        if state is State.ARMED and cfg.missed_heartbeats > 1:
            last = max(self._base + (cfg.missed_heartbeats - 1) * self._interval, floor)
            if last < hang:
                return last, Input.LAST_INTERVAL
        return hang, Input.HANG_DEADLINE

    def _hold_reason(self) -> Optional[str]:
        if not self._channel_up:
            return "channel closed"
        if self._domain not in _DOMAIN_RUNS:
            return f"domain {self._domain.value}"
        return None

    def _hang_detection(self, now: float) -> str:
        if self._state not in (State.ARMED, State.SUSPECT):
            return f"off ({self._state.value})"
        hold = self._hold_reason()
        if hold is not None:
            return f"held ({hold})"
        if now < self._watch_from:
            return f"held (min_uptime for {self._watch_from - now:.1f}s)"
        return "active"

    def _dispatch(self, inp: Input, at: float, msg: Optional[Message]) -> None:
        handler = TABLE.get((self._state, inp))
        if handler is None:
            self._ignore(inp.value, f"in_{self._state.value}")
            return
        if isinstance(handler, State):
            nxt: Optional[State] = handler
        else:
            nxt = getattr(self, "_on_" + handler)(at, inp, msg)
        if nxt is not None:
            self._enter(nxt, at)

    def _enter(self, state: State, at: float) -> None:
        old = self._state
        if state is old:
            return
        self._state = state
        self._since = at
        self._metric(
            "iim_detector_transitions_total", labels=(("from", old.value), ("to", state.value))
        )
        self._log(
            logging.DEBUG, "instance %s: %s -> %s", self.instance_uuid, old.value, state.value
        )
        if state is State.SUSPECT:
            self._log(
                logging.INFO,
                "instance %s: no heartbeat for %.1fs; one more missed interval is a hang",
                self.instance_uuid, at - self._base,
            )

    def _log(self, level: int, message: str, *args: Any) -> None:
        self._out.append(Log(level, message, args))

    def _metric(self, name: str, value: float = 1.0, labels: tuple = ()) -> None:
        self._out.append(Metric(name, value, labels))

    def _ignore(self, what: str, reason: str, level: int = logging.DEBUG) -> None:
        self._metric("iim_detector_ignored_total", labels=(("input", what), ("reason", reason)))
        self._log(
            level, "instance %s: ignored %s (%s)",
            self.instance_uuid, what, reason.replace("_", " "),
        )

    def _watch(self, at: float) -> State:
        """The state to watch from at ``at``, with the heartbeat timer fresh."""
        self._base = max(self._base, at)
        self._hold_until = _NEG_INF
        if not self._channel_up or self._interval is None:
            return State.UNKNOWN
        if self._paused_until is not None and self._paused_until > at:
            return State.PAUSED
        self._paused_until = None
        return State.ARMED

    def _notify(self, kind: str, check: Optional[str], reason: str, at: float) -> Optional[State]:
        cfg = self.config
        reason = _clean(reason)
        if self._domain not in _DOMAIN_RUNS:
            self._ignore(kind, f"domain_{self._domain.value}", logging.WARNING)
            self._log(
                logging.WARNING,
                "instance %s: not notifying %s while the domain is %s: %s",
                self.instance_uuid, kind, self._domain.value, reason,
            )
            return None
        while self._sent and self._sent[0] <= at - cfg.notification_window:
            self._sent.popleft()
        if len(self._sent) >= cfg.max_notifications:
            self._storm_capped += 1
            self._incident = _Incident(kind, check, reason, at, notified=False)
            self._metric("iim_detector_storm_capped_total", labels=(("kind", kind),))
            self._log(
                logging.WARNING,
                "instance %s: restart storm cap hit (%d notifications in %.0fs): "
                "not notifying %s: %s; the instance stays FAILED until it says hello",
                self.instance_uuid, len(self._sent), cfg.notification_window, kind, reason,
            )
            return State.FAILED
        self._sent.append(at)
        self._incident = _Incident(kind, check, reason, at, notified=True)
        self._cooldown_until = at + cfg.cooldown
        self._departed_in_cooldown = False
        self._out.append(Notify(kind, self.instance_uuid, reason, at))
        self._metric("iim_detector_notifications_total", labels=(("kind", kind),))
        self._log(
            logging.WARNING,
            "instance %s: notifying Masakari: %s: %s (no further notification for %.0fs)",
            self.instance_uuid, kind, reason, cfg.cooldown,
        )
        return State.COOLDOWN

    def _set_pause(self, at: float, msg: Pause) -> None:
        cfg = self.config
        duration = msg.duration
        if duration > cfg.max_pause:
            self._metric("iim_detector_pause_clamped_total")
            self._log(
                logging.WARNING,
                "instance %s: guest asked for a %.0fs pause; clamped to %.0fs",
                self.instance_uuid, duration, cfg.max_pause,
            )
            duration = cfg.max_pause
        self._paused_until = at + duration
        self._pause_reason = _clean(msg.reason)
        self._log(
            logging.INFO, "instance %s: paused by the guest for %.0fs: %r",
            self.instance_uuid, duration, self._pause_reason,
        )

    def _resolve(self, at: float, why: str) -> None:
        if self._incident is not None and self._incident.open:
            self._incident.open = False
            self._log(
                logging.INFO, "instance %s: %s incident over: %s",
                self.instance_uuid, self._incident.kind, why,
            )

    def _note_checks(self, msg: Heartbeat) -> None:
        self._checks = dict(msg.checks)

    # ------------------------------------------------------------- handlers
    # Named by TABLE; each takes (at, input, message) and returns the next
    # state or None to stay.

    def _on_noop(self, at, inp, msg) -> None:
        return None

    def _on_arm(self, at: float, inp: Input, msg: Hello) -> State:
        self._note_hello(at, msg)
        return self._watch(at)

    def _on_note_hello(self, at: float, inp: Input, msg: Hello) -> None:
        self._note_hello(at, msg)

    def _note_hello(self, at: float, msg: Hello) -> None:
        cfg = self.config
        asked = msg.heartbeat_interval
        interval = min(max(asked, cfg.min_interval), cfg.max_interval)
        if interval != asked:
            self._metric("iim_detector_interval_clamped_total")
            self._log(
                logging.WARNING,
                "instance %s: guest asked for a heartbeat every %.3gs; using %.3gs "
                "(allowed %.3g-%.3gs)",
                self.instance_uuid, asked, interval, cfg.min_interval, cfg.max_interval,
            )
        if self._boot_id is not None and msg.boot_id != self._boot_id:
            self._log(
                logging.INFO, "instance %s: guest rebooted (boot id %s -> %s)",
                self.instance_uuid, self._boot_id, msg.boot_id,
            )
        if self._paused_until is not None:
            self._log(
                logging.INFO,
                "instance %s: hello cancels the guest's pause (the agent re-sends it if needed)",
                self.instance_uuid,
            )
        self._interval = interval
        self._hello_at = at
        self._watch_from = at + cfg.min_uptime
        self._base = at
        self._hold_until = _NEG_INF
        self._paused_until = None
        self._departed_in_cooldown = False
        self._agent_version = msg.agent_version
        self._boot_id = msg.boot_id
        self._hello_checks = msg.checks
        self._checks = {}
        self._resolve(at, "the agent said hello")
        self._log(
            logging.INFO,
            "instance %s: agent %s (boot %s) said hello: heartbeat every %.3gs, hang after "
            "%.3gs without one, hang detection starts %.3gs after hello",
            self.instance_uuid, msg.agent_version, msg.boot_id, interval,
            interval * cfg.missed_heartbeats, cfg.min_uptime,
        )

    def _on_rearm(self, at: float, inp: Input, msg: Message) -> None:
        if self._interval is None:
            level = logging.INFO if inp is Input.FAILURE else logging.DEBUG
            self._ignore(inp.value, "before_hello", level)
            return None
        self._log(
            logging.INFO,
            "instance %s: guest speaks again after a reconnect; watching heartbeats "
            "(every %.3gs, from its last hello)",
            self.instance_uuid, self._interval,
        )
        self._base = at
        state = self._watch(at)
        if state is State.UNKNOWN:  # cannot happen: a message implies a channel
            return None
        self._enter(state, at)
        self._dispatch(inp, at, msg)
        return None

    def _on_beat(self, at: float, inp: Input, msg: Heartbeat) -> Optional[State]:
        silent = at - self._base
        self._last_heartbeat_at = at
        self._last_seq = msg.seq
        self._note_checks(msg)
        self._base = max(self._base, at)
        self._hold_until = _NEG_INF
        if self._state is State.SUSPECT:
            self._log(
                logging.INFO, "instance %s: heartbeats resumed after %.1fs",
                self.instance_uuid, silent,
            )
            return State.ARMED
        return None

    def _on_incident_beat(self, at: float, inp: Input, msg: Heartbeat) -> Optional[State]:
        self._last_heartbeat_at = at
        self._last_seq = msg.seq
        self._note_checks(msg)
        self._base = max(self._base, at)
        if self._incident is not None and self._incident.kind == GUEST_HANG and self._incident.open:
            self._resolve(at, "heartbeats resumed")
            if self._state is State.FAILED:
                return self._watch(at)
        return None

    def _on_failure(self, at: float, inp: Input, msg: Failure) -> Optional[State]:
        self._checks[msg.check] = "failed"
        reason = f"check {_clean(msg.check, 64)} failed: {_clean(msg.reason)}"
        return self._notify(PROCESS_FAILURE, msg.check, reason, at)

    def _on_suppressed(self, at: float, inp: Input, msg: Failure) -> None:
        self._checks[msg.check] = "failed"
        self._ignore("failure", self._state.value, logging.INFO)
        self._log(
            logging.INFO, "instance %s: guest reports check %r failed (%s); not notifying: %s",
            self.instance_uuid, _clean(msg.check, 64), _clean(msg.reason),
            {
                State.PAUSED: "the guest paused monitoring",
                State.COOLDOWN: "Masakari is recovering this instance",
                State.FAILED: "an earlier failure is still open",
            }[self._state],
        )

    def _on_recovered(self, at: float, inp: Input, msg: Recovered) -> None:
        self._checks[msg.check] = "ok"
        self._log(
            logging.INFO, "instance %s: guest reports check %r recovered",
            self.instance_uuid, _clean(msg.check, 64),
        )

    def _on_incident_recovered(self, at: float, inp: Input, msg: Recovered) -> Optional[State]:
        self._on_recovered(at, inp, msg)
        inc = self._incident
        if inc is not None and inc.open and inc.kind == PROCESS_FAILURE and inc.check == msg.check:
            self._resolve(at, f"check {_clean(msg.check, 64)!r} recovered")
            if self._state is State.FAILED:
                return self._watch(at)
        return None

    def _on_depart(self, at: float, inp: Input, msg: Goodbye) -> State:
        self._log(
            logging.INFO, "instance %s: agent said goodbye (%s); silence is expected until hello",
            self.instance_uuid, msg.reason,
        )
        return State.DEPARTED

    def _on_note_goodbye(self, at: float, inp: Input, msg: Goodbye) -> None:
        self._departed_in_cooldown = True
        self._log(
            logging.INFO, "instance %s: agent said goodbye (%s) during the cooldown",
            self.instance_uuid, msg.reason,
        )

    def _on_pause(self, at: float, inp: Input, msg: Pause) -> State:
        self._set_pause(at, msg)
        return State.PAUSED

    def _on_note_pause(self, at: float, inp: Input, msg: Pause) -> None:
        self._set_pause(at, msg)

    def _on_resume(self, at: float, inp: Input, msg: Resume) -> State:
        self._paused_until = None
        self._log(logging.INFO, "instance %s: guest resumed monitoring", self.instance_uuid)
        return self._watch(at)

    def _on_note_resume(self, at: float, inp: Input, msg: Resume) -> None:
        if self._paused_until is None:
            self._ignore("resume", "not_paused")
            return
        self._paused_until = None
        self._log(logging.INFO, "instance %s: guest resumed monitoring", self.instance_uuid)

    def _on_pause_expired(self, at: float, inp: Input, msg: None) -> State:
        self._paused_until = None
        self._log(logging.INFO, "instance %s: the guest's pause ended", self.instance_uuid)
        return self._watch(at)

    def _on_disarm(self, at: float, inp: Input, msg: None) -> State:
        return State.UNKNOWN

    def _on_fresh_timer(self, at: float, inp: Input, msg: None) -> State:
        self._base = max(self._base, at)
        self._hold_until = _NEG_INF
        return State.ARMED if self._state is State.SUSPECT else self._state

    def _on_end_incarnation(self, at: float, inp: Input, msg: None) -> State:
        self._on_forget_incarnation(at, inp, msg)
        return State.UNKNOWN

    def _on_forget_incarnation(self, at: float, inp: Input, msg: None) -> None:
        if self._interval is not None:
            self._log(
                logging.INFO,
                "instance %s: domain stopped; monitoring resumes when the agent says hello",
                self.instance_uuid,
            )
        self._interval = None
        self._paused_until = None

    def _on_hang(self, at: float, inp: Input, msg: None) -> Optional[State]:
        assert self._interval is not None
        late = self._now - at
        if late > self.config.late_tolerance:
            self._hold_until = self._now + self._interval
            self._metric("iim_detector_late_deadline_total")
            self._log(
                logging.WARNING,
                "instance %s: hang deadline passed %.1fs ago while the relay was busy; "
                "re-checking in %.3gs before notifying",
                self.instance_uuid, late, self._interval,
            )
            return None
        reason = (
            f"no heartbeat for {at - self._base:.1f}s "
            f"(interval {self._interval:.3g}s, {self.config.missed_heartbeats} missed)"
        )
        return self._notify(GUEST_HANG, None, reason, at)

    def _on_cooldown_expired(self, at: float, inp: Input, msg: None) -> State:
        self._cooldown_until = None
        inc = self._incident
        if self._departed_in_cooldown:
            # The agent stopped on purpose after the failure (often: Masakari
            # shut the guest down to restart it): wait for its hello, as after
            # any goodbye; status still shows the incident.
            self._log(
                logging.INFO,
                "instance %s: cooldown over; the agent said goodbye, waiting for its hello",
                self.instance_uuid,
            )
            return State.DEPARTED
        if inc is not None and inc.open:
            self._log(
                logging.WARNING,
                "instance %s: cooldown over but the %s is not over (no hello, recovery or "
                "heartbeat since); monitoring resumes when it is",
                self.instance_uuid, inc.kind,
            )
            return State.FAILED
        self._log(logging.INFO, "instance %s: cooldown over; monitoring again", self.instance_uuid)
        return self._watch(at)
