"""Per-instance failure detector of the host relay: sans-I/O.

Theory of operation
-------------------
One :class:`Detector` per instance turns what the relay sees - the guest's
messages, its channel opening and closing, the domain's state from libvirt,
the passing of time - into typed outputs (``detector_outputs``): ``Notify``,
``Persist``, ``Transitioned``, ``Ignored``, ``Suppressed`` ...  Like h11's
``Connection`` it does no I/O and reads no clock: every call takes ``now``
(monotonic seconds); :meth:`Detector.next_deadline` says when to call
:meth:`Detector.tick`.  Due timers run first, at their own deadline.

Every transition is one row of ``detector_table.TABLE``: (state, input) ->
(handler, destination state or guard).  A message becomes inputs
(``detector_inputs.feed_message``); a heartbeat is the agent's whole state, so
it arms a detector that never saw a hello, and a check it reports failed is
the same FAILURE input a failure frame is (the frame is the fast path), a
check it reports ok is RECOVERED, and a pause level (0.2 agents) is PAUSE or
RESUME.  0.1.0 agents send no level: their pause/resume frames are the edges.
The operator's pause (:meth:`Detector.host_pause`, ``iim-relay pause``) is
kept apart from the guest's: HOST_PAUSE/HOST_RESUME inputs and its own
fields, so a heartbeat saying "not paused" never ends it and the host's
resume never ends the guest's; PAUSED holds while either does.  A domain
stop or agent start ends the guest's pause, not the host's.

What notifies, and only this, once per incident:

* a failed check (frame or heartbeat) while UNKNOWN/ARMED/SUSPECT;
* ``missed_heartbeats`` x interval without hearing the guest while armed,
  channel up, domain running, min_uptime after the start passed.  The
  silence runs from the last heartbeat/hello, reconnect, pause end or the
  domain's return to running.  A deadline found more than ``late_tolerance``
  late means the relay stalled: re-checked one interval later.

Not while the domain is not running, the guest or the host paused it, an incident is open
or in the cooldown; the storm cap (``max_notifications`` per sliding
``notification_window``) turns a notification into an open incident (FAILED).
Only a start (new boot id or start id) ends a process-failure incident besides
the check recovering; hearing the guest ends a hang incident.  A periodic hello
changes nothing.  A channel that closes keeps the detector armed; the timer
holds until it reconnects.

The durable part (``record()``, ``DetectorRecord``) is emitted as ``Persist``
when it changes in a way that matters (not on plain heartbeats, nor on pause
ends moving by less than PAUSE_SLACK).  What a notification decides (incident,
cooldown, storm-cap window) is written in the same call; the rest (armed,
interval, boot/start id, pause) too, unless it already changed within
WRITE_EVERY - a guest churning them gets one write per WRITE_EVERY, due at
:meth:`Detector.next_deadline`.  ``restored=`` brings it back: the relay's
downtime never counts as silence (the timer starts at the restore), a restored
cooldown, incident, storm-cap window and pause hold as they were.
"""

from __future__ import annotations

from typing import Any, Optional

from host_relay import detector_rules as rules
from host_relay.detector_config import DetectorConfig  # re-exported: its home moved
from host_relay.detector_inputs import Input, PauseEvent, WitnessEvent, feed_message
from host_relay.detector_outputs import (
    GUEST_HANG,
    PROCESS_FAILURE,
    AgentLost,
    DetectorCounters,
    DetectorStatus,
    HangHeld,
    Ignored,
    IncidentClosed,
    LateDeadline,
    Notify,
    Output,
    PauseChanged,
    PauseStatus,
    Persist,
    Started,
    Suppressed,
    Transitioned,
)
from host_relay.detector_record import DetectorRecord, Incident
from host_relay.detector_rules import (
    DOMAIN_HELD,
    DOMAIN_RUNS,
    MAX_REASON_CHARS,
    PAUSE_SLACK,
    DomainState,
    Facts,
    State,
)
from host_relay.detector_table import TABLE
from iim_protocol.messages import GUEST_TO_HOST, Message

#: A guest that keeps changing what "may" be written (its start id, pause, armed
#: by goodbye/hello ...) gets at most one such write per this many seconds.
WRITE_EVERY = 10.0
_MUST, _MAY = "must", "may"

#: What a witness decision (host_relay.witness_decision.Outcome values) feeds the table.
WITNESS_INPUTS = {
    "confirmed_hang": Input.WITNESS_HUNG,
    "agent_lost": Input.WITNESS_ALIVE,
    "agent_lost_notify": Input.WITNESS_ALIVE,
    "no_witness": Input.WITNESS_UNKNOWN,
}

__all__ = [
    "AgentLost", "HangHeld", "WitnessEvent", "GUEST_HANG", "MAX_REASON_CHARS", "PROCESS_FAILURE",
    "Detector", "DetectorConfig",
    "DetectorCounters", "DetectorRecord", "DetectorStatus", "DomainState", "Ignored", "Incident",
    "IncidentClosed", "LateDeadline", "Notify", "Output", "PauseChanged", "PauseStatus", "Persist",
    "Started", "State", "Suppressed", "Transitioned",
]



class Detector:
    """Failure detector for one instance.  See the module docstring."""

    def __init__(
        self,
        config: DetectorConfig,
        now: float,
        *,
        domain: DomainState = DomainState.RUNNING,
        restored: Optional[DetectorRecord] = None,
    ) -> None:
        now = rules.finite(now)
        self.config = config
        self._f = Facts(config=config, now=now, domain=domain, since=now, base=now)
        self._persisted = DetectorRecord() if restored is None else restored
        self._persisted_at = float("-inf")
        if restored is not None:
            self._restore(restored, now)

    def _restore(self, r: DetectorRecord, now: float) -> None:
        f, cfg = self._f, self.config
        if r.interval is not None:
            f.interval = min(max(r.interval, cfg.min_interval), cfg.max_interval)
        f.armed = r.armed and f.interval is not None
        f.boot_id, f.start_id, f.last_heard = r.boot_id, r.start_id, r.last_heard
        f.incident, f.cooldown_until = r.incident, r.cooldown_until
        f.agent_lost_since = r.agent_lost_since if f.armed else None
        f.notified_at.extend(sorted(r.notified_at))
        if r.pause_until is not None and r.pause_until > now:
            f.pause_until = min(r.pause_until, now + cfg.max_pause)
            f.pause_reason, f.pause_origin = r.pause_reason, r.pause_origin or "guest"
        if r.host_pause_until is not None and r.host_pause_until > now:
            f.host_pause_until = min(r.host_pause_until, now + cfg.max_pause)
            f.host_pause_reason = r.host_pause_reason
        if f.domain not in DOMAIN_RUNS and f.domain not in DOMAIN_HELD:
            f.armed, f.interval = False, None  # stopped: as a DOMAIN_STOP would
            f.pause_until, f.pause_reason, f.pause_origin = None, "", ""
        f.state = rules.settle(f, now)  # the timer starts now: downtime is not silence
        self._persisted = self.record()  # what differs from ``r`` is redone at every restore

    # ------------------------------------------------------------------ API

    @property
    def state(self) -> State:
        return self._f.state

    @property
    def counters(self) -> DetectorCounters:
        return self._f.counters

    def channel_connected(self, now: float) -> list[Output]:
        def fact() -> None:
            self._f.channel_up = True

        return self._run(now, Input.CONNECTED, None, fact)

    def channel_closed(self, now: float) -> list[Output]:
        def fact() -> None:
            self._f.channel_up = False

        return self._run(now, Input.CLOSED, None, fact)

    def host_pause(self, duration: float, reason: str, now: float) -> list[Output]:
        """The operator pauses this instance for ``duration`` s (bounded by max_pause)."""
        ev = PauseEvent(rules.finite(duration), reason, "host")
        return self._run(now, Input.HOST_PAUSE, ev, None)

    def host_resume(self, now: float) -> list[Output]:
        """The operator's pause ends now; a guest pause, if any, still holds."""
        return self._run(now, Input.HOST_RESUME, PauseEvent(None, "", "host"), None)

    def message(self, msg: Message, now: float) -> list[Output]:
        f = self._f

        def fact() -> None:
            if not f.channel_up:  # frames only come over an open channel: believe it
                f.channel_up = True
                rules.ignore(f, "channel_connected", "implicit", f.now)
                self._dispatch(Input.CONNECTED, f.now, None)
            if not isinstance(msg, Message) or msg.TYPE not in GUEST_TO_HOST:
                rules.ignore(f, "message", "unknown_type", f.now)
                return
            feed_message(f, msg, lambda inp, ev: self._dispatch(inp, f.now, ev))

        return self._run(now, None, None, fact)

    def domain_state(self, state: DomainState, now: float) -> list[Output]:
        f, old = self._f, self._f.domain
        if state is old:
            inp = None
        elif state in DOMAIN_RUNS:
            inp = None if old in DOMAIN_RUNS else Input.DOMAIN_UP
        else:
            inp = Input.DOMAIN_HOLD if state in DOMAIN_HELD else Input.DOMAIN_STOP

        def fact() -> None:
            if state is old:
                rules.ignore(f, "domain", "unchanged", f.now)
            f.domain = state

        return self._run(now, inp, None, fact)

    def witness(self, outcome: str, ev: WitnessEvent, now: float) -> list[Output]:
        """The host's witnesses decided (``outcome``: a witness_decision.Outcome value):
        confirmed_hang notifies now naming ``ev.by``; agent_lost holds the hang
        deadline one detector window (and notifies after ``ev.notify_lost_after``
        if set); no_witness leaves today's rule.  A panic event may come at any
        time; the others only while :meth:`silence` says the instance is silent."""
        if outcome not in WITNESS_INPUTS:
            raise ValueError(f"unknown witness outcome {outcome!r}")
        return self._run(now, WITNESS_INPUTS[outcome], ev, None)

    def host_hold(self, why: str, now: float) -> list[Output]:
        """The host-wide silence guard engaged (``why``) or let go (""): while engaged a
        hang found by the heartbeat rule is held (process failures and witness-confirmed
        hangs never are); when it lets go a held hang is notified at once."""
        f = self._f
        inp = None
        if not why and f.held_hang is not None:
            inp = Input.HANG_RELEASED

        def fact() -> None:
            f.hang_hold = rules.clean(why)

        return self._run(now, inp, None, fact)

    def silence(self, now: float) -> Optional[tuple[float, float]]:
        """(silent since, interval) while hang detection runs, for the witnesses' timer
        (host_relay.witness_decision.SilenceJudge.ask_due/next_ask); else None."""
        f = self._f
        if (f.state not in (State.ARMED, State.SUSPECT, State.AGENT_LOST) or f.interval is None
                or self._hold_reason() is not None or now < f.watch_from):
            return None
        return f.base, f.interval

    def tick(self, now: float) -> list[Output]:
        return self._run(now, None, None, None)

    def next_deadline(self) -> Optional[float]:
        pending = self._pending()
        deadline = None if pending is None else pending[0]
        if self._changed() is _MAY:  # a write held back: tick when it is due
            due = self._persisted_at + WRITE_EVERY
            deadline = due if deadline is None else min(deadline, due)
        return deadline

    def record(self) -> DetectorRecord:
        f = self._f
        return DetectorRecord(
            armed=f.armed, interval=f.interval, boot_id=f.boot_id, start_id=f.start_id,
            last_heard=f.last_heard, incident=f.incident, cooldown_until=f.cooldown_until,
            notified_at=tuple(f.notified_at), pause_until=f.pause_until,
            pause_reason=f.pause_reason, pause_origin=f.pause_origin,
            host_pause_until=f.host_pause_until, host_pause_reason=f.host_pause_reason,
            agent_lost_since=f.agent_lost_since,
        )

    def status(self, now: float) -> DetectorStatus:
        """Runs no timers: call tick first."""
        f, cfg = self._f, self.config
        now = max(rules.finite(now), f.now)
        pending = self._pending()
        hang_in = None
        if pending is not None and f.state in (State.ARMED, State.SUSPECT, State.AGENT_LOST):
            hang = max(f.base + cfg.missed_heartbeats * (f.interval or 0.0),
                       f.watch_from, f.hold_until)
            hang_in = max(0.0, hang - now)
        paused = f.pause_until is not None and f.pause_until > now
        return DetectorStatus(
            state=f.state, since=f.since, armed=f.armed, channel_up=f.channel_up,
            domain=f.domain, interval=f.interval,
            hang_after=None if f.interval is None else f.interval * cfg.missed_heartbeats,
            hang_detection=self._hang_detection(now), hang_in=hang_in,
            last_heard_age=None if f.last_heard is None else max(0.0, now - f.last_heard),
            last_seq=f.last_seq,
            cooldown_remaining=(max(0.0, f.cooldown_until - now)
                                if f.cooldown_until is not None else None),
            pause=(PauseStatus(f.pause_until - now, f.pause_reason, f.pause_origin)
                   if paused else None),
            checks=tuple(sorted(f.checks.items())), incident=f.incident,
            notifications_in_window=sum(
                1 for t in f.notified_at if t > now - cfg.notification_window),
            boot_id=f.boot_id, start_id=f.start_id, agent_version=f.agent_version,
            counters=f.counters.copy(),
            host_pause=(PauseStatus(f.host_pause_until - now, f.host_pause_reason, "host")
                        if f.host_pause_until is not None and f.host_pause_until > now
                        else None),
            witness=f.witness, witness_detail=f.witness_detail,
            agent_lost_for=(None if f.agent_lost_since is None
                            else max(0.0, now - f.agent_lost_since)),
            hang_held=f.hang_hold if f.held_hang is not None else None,
        )

    # ------------------------------------------------------------ machinery

    def _run(self, now, inp, msg, fact) -> list[Output]:
        f = self._f
        f.out = out = []
        now = rules.finite(now)
        if now < f.now:
            rules.ignore(f, "now", "clock_backwards", f.now)
            now = f.now
        f.now = now
        self._advance(now)
        if fact is not None:
            fact()
        if inp is not None:
            self._dispatch(inp, now, msg)
        self._advance(now)
        change = self._changed()
        if change is _MUST or (change is _MAY and now >= self._persisted_at + WRITE_EVERY):
            self._persisted, self._persisted_at = self.record(), now
            f.counters.persists += 1
            out.append(Persist(self._persisted))
        f.out = []
        return out

    def _changed(self) -> Optional[str]:
        """How the durable part differs from the last Persist: _MUST, _MAY or None.

        _MUST (written at once): the incident, the cooldown, the storm-cap window -
        what a notification decides, and the operator's pause (its command answers
        once it is on disk).  _MAY (written at once, or WRITE_EVERY after
        the last write when the guest keeps changing it): armed, interval, boot
        and start id, the pause.  Never for last_heard (every heartbeat) nor a
        pause end moved by less than PAUSE_SLACK."""
        f, old = self._f, self._persisted
        if old.incident != f.incident or old.cooldown_until != f.cooldown_until or len(
                old.notified_at) != len(f.notified_at) or (
                f.notified_at and old.notified_at[-1] != f.notified_at[-1]):
            return _MUST
        if (old.host_pause_until, old.host_pause_reason) != (f.host_pause_until,
                                                             f.host_pause_reason):
            return _MUST
        if (old.armed, old.interval, old.boot_id, old.start_id, old.pause_reason,
                old.pause_origin, old.agent_lost_since) != (
                f.armed, f.interval, f.boot_id, f.start_id, f.pause_reason, f.pause_origin,
                f.agent_lost_since):
            return _MAY
        if old.pause_until is None or f.pause_until is None:
            return _MAY if (old.pause_until is None) != (f.pause_until is None) else None
        return _MAY if abs(old.pause_until - f.pause_until) > PAUSE_SLACK else None

    def _advance(self, now: float) -> None:
        # Each timer handler leaves its state or moves its deadline past now,
        # so this ends; the bound only guards against a future bug.
        for _ in range(32):
            pending = self._pending()
            if pending is None or pending[0] > now:
                return
            self._dispatch(pending[1], pending[0], None)
        raise RuntimeError("detector timers did not settle")

    def _pending(self) -> Optional[tuple[float, Input]]:
        """The next timer: (deadline, input), or None."""
        f, cfg = self._f, self.config
        if f.state is State.PAUSED:
            ends = rules.pause_ends(f)
            assert ends
            return min(ends), Input.PAUSE_EXPIRED
        if f.state is State.COOLDOWN:
            assert f.cooldown_until is not None
            return f.cooldown_until, Input.COOLDOWN_EXPIRED
        if (f.state not in (State.ARMED, State.SUSPECT, State.AGENT_LOST)
                or self._hold_reason() is not None or f.held_hang is not None):
            return None
        assert f.interval is not None
        floor = max(f.watch_from, f.hold_until)
        hang = max(f.base + cfg.missed_heartbeats * f.interval, floor)
        if f.state is State.ARMED and cfg.missed_heartbeats > 1:
            last = max(f.base + (cfg.missed_heartbeats - 1) * f.interval, floor)
            if last < hang:
                return last, Input.LAST_INTERVAL
        return hang, Input.HANG_DEADLINE

    def _hold_reason(self) -> Optional[str]:
        if not self._f.channel_up:
            return "channel closed"
        if self._f.domain not in DOMAIN_RUNS:
            return f"domain {self._f.domain.value}"
        return None

    def _hang_detection(self, now: float) -> str:
        f = self._f
        if f.state not in (State.ARMED, State.SUSPECT, State.AGENT_LOST):
            return f"off ({f.state.value})"
        hold = self._hold_reason()
        if hold is not None:
            return f"held ({hold})"
        if f.held_hang is not None:
            return f"held (host-wide silence: {f.hang_hold})"
        if f.state is State.AGENT_LOST and now < f.hold_until:
            return (f"held (agent lost; {f.witness} answers; "
                    f"{f.hold_until - now:.1f}s unless confirmed again)")
        if now < f.watch_from:
            return f"held (min_uptime for {f.watch_from - now:.1f}s)"
        return "active"

    def _dispatch(self, inp: Input, at: float, ev: Any) -> bool:
        """Run the table's row for (state, inp); False if the input means nothing here."""
        f = self._f
        row = TABLE.get((f.state, inp))
        if row is None:
            rules.ignore(f, inp.value, f"in_{f.state.value}", at)
            return False
        handler, to = row
        if handler is not None:
            handler(f, at, ev)
        if to is not None:
            rules.enter(f, to if isinstance(to, State) else to(f, at), inp.value, at)
        return True
