"""The failure detector's states, facts, handlers and guards.

``detector_table.TABLE`` names, for each (state, input), a handler from this
module (it changes the :class:`Facts`) and the destination: a :class:`State`,
or a guard from this module that picks it from the facts.  The inputs and
what a message becomes are in ``detector_inputs``.  Theory of operation:
``host_relay/detector.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
from typing import TYPE_CHECKING, Any, Callable, Optional

from host_relay.detector_outputs import (
    GUEST_HANG,
    PROCESS_FAILURE,
    AgentLost,
    DetectorCounters,
    HangHeld,
    Ignored,
    IncidentClosed,
    LateDeadline,
    Notify,
    PauseChanged,
    Started,
    Suppressed,
    Transitioned,
)
from host_relay.detector_record import Incident
from iim_protocol.messages import MAX_CHECKS, Goodbye

if TYPE_CHECKING:
    from host_relay.detector_inputs import CheckEvent, Contact, PauseEvent, WitnessEvent

#: Longest reason put into a notification or output (characters).
MAX_REASON_CHARS = 255
#: A pause end that moves by less than this (a heartbeat's pause level read a
#: little later than the last one) is not a change worth an output or a write.
PAUSE_SLACK = 1.0
NEG_INF = float("-inf")


class State(enum.Enum):
    UNKNOWN = "unknown"  # not armed: no interval known, or the domain stopped
    ARMED = "armed"  # watching heartbeats (the timer runs while channel up and domain running)
    SUSPECT = "suspect"  # one interval from a hang; status only
    PAUSED = "paused"  # a maintenance pause (guest's or host's): nothing notifies until it ends
    COOLDOWN = "cooldown"  # Masakari was notified and is recovering: nothing notifies
    FAILED = "failed"  # an incident is open and nobody recovers it: waits for it to end
    DEPARTED = "departed"  # the agent said goodbye: silence expected until it speaks again
    AGENT_LOST = "agent_lost"  # silent, but a witness shows the guest runs: the hang is held


class DomainState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    MIGRATING = "migrating"
    UNKNOWN = "unknown"


DOMAIN_RUNS = frozenset({DomainState.RUNNING, DomainState.UNKNOWN})
DOMAIN_HELD = frozenset({DomainState.PAUSED, DomainState.MIGRATING})
# What a guest panic does to its own domain (QEMU pauses it, libvirt marks it crashed
# or destroys it): no reason to hold the panic's notification.
DOMAIN_AFTER_PANIC = frozenset({DomainState.PAUSED, DomainState.CRASHED})


@dataclasses.dataclass
class Facts:
    """Everything one detector knows: one record, read and changed by the handlers."""

    config: Any
    now: float
    domain: DomainState
    state: State = State.UNKNOWN
    since: float = 0.0
    out: list = dataclasses.field(default_factory=list)
    counters: DetectorCounters = dataclasses.field(default_factory=DetectorCounters)
    channel_up: bool = False
    # The agent: armed = watched for hangs (durable); identity from hello/heartbeat.
    armed: bool = False
    interval: Optional[float] = None
    boot_id: str = ""
    start_id: str = ""
    agent_version: Optional[str] = None
    departed: bool = False
    watch_from: float = NEG_INF  # start + min_uptime
    # Liveness: the silence is measured from base; hold_until delays a late deadline.
    base: float = NEG_INF
    hold_until: float = NEG_INF
    last_heard: Optional[float] = None
    last_seq: Optional[int] = None
    checks: dict = dataclasses.field(default_factory=dict)
    # Pause, incident, cooldown, storm-cap window.
    pause_until: Optional[float] = None
    pause_reason: str = ""
    pause_origin: str = ""
    host_pause_until: Optional[float] = None  # the operator's, apart from the guest's
    host_pause_reason: str = ""
    incident: Optional[Incident] = None
    cooldown_until: Optional[float] = None
    notified_at: collections.deque = dataclasses.field(default_factory=collections.deque)
    # The host's witnesses: the last decision's witness, the agent's loss (durable),
    # the host-wide silence guard's hold (host_relay.silence_guard) and a hang it holds.
    witness: Optional[str] = None
    witness_detail: str = ""
    agent_lost_since: Optional[float] = None
    hang_hold: str = ""  # why the guard holds hangs now; "" when it does not
    held_hang: Optional[float] = None  # the deadline of a hang the guard holds


Handler = Callable[[Facts, float, Any], None]
Guard = Callable[[Facts, float], State]


def clean(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Guest text for an output: printable only, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------ fact helpers


def emit(f: Facts, out: Any) -> None:
    f.out.append(out)


def ignore(f: Facts, what: str, reason: str, at: float) -> None:
    f.counters.ignored[f"{what}:{reason}"] += 1
    emit(f, Ignored(what, reason, at))


def enter(f: Facts, state: State, why: str, at: float) -> None:
    if state is f.state:
        return
    emit(f, Transitioned(f.state, state, why, at))
    f.counters.transitions += 1
    f.state, f.since = state, at


def fresh_timer(f: Facts, at: float, ev: Any = None) -> None:
    f.base = max(f.base, at)
    f.hold_until = NEG_INF
    f.held_hang = None


def heard(f: Facts, at: float, seq: Optional[int] = None) -> None:
    """The agent is alive: restart the silence, and a hang incident is over."""
    f.last_heard = at
    if seq is not None:
        f.last_seq = seq
    fresh_timer(f, at)
    f.agent_lost_since, f.witness, f.witness_detail = None, None, ""
    if f.incident is not None and f.incident.kind == GUEST_HANG:
        close_incident(f, "the guest speaks again", at)


def note_check(f: Facts, name: str, state: str) -> None:
    """A frame's word on one check; at most MAX_CHECKS names, whatever the guest sends."""
    if name in f.checks or len(f.checks) < MAX_CHECKS:
        f.checks[name] = state


def close_incident(f: Facts, why: str, at: float) -> None:
    inc = f.incident
    if inc is not None:
        f.incident = None
        emit(f, IncidentClosed(inc.kind, inc.check, why, at))


def set_interval(f: Facts, c: Contact, at: float, start: bool) -> None:
    cfg = f.config
    if c.interval is None:
        return
    used = min(max(c.interval, cfg.min_interval), cfg.max_interval)
    if used != c.interval and (start or used != f.interval):
        f.counters.clamped["interval"] += 1
    if start or used != f.interval:
        emit(f, Started(c.boot_id or f.boot_id, c.start_id, c.agent_version or f.agent_version,
                        used, c.interval, start, at))
    f.interval = used


def set_pause(f: Facts, at: float, ev: PauseEvent) -> None:
    assert ev.duration is not None
    used = min(ev.duration, f.config.max_pause)
    until, reason = at + used, clean(ev.reason)
    moved = (f.pause_until is None or ev.source == "frame" or reason != f.pause_reason
             or abs(until - f.pause_until) > PAUSE_SLACK)
    f.pause_until, f.pause_reason, f.pause_origin = until, reason, "guest"
    if moved:
        clamped = used < ev.duration
        if clamped:
            f.counters.clamped["pause"] += 1
        emit(f, PauseChanged(until, reason, ev.source, at, ev.duration if clamped else None))


def clear_pause(f: Facts, at: float, source: str) -> None:
    if f.pause_until is not None:
        f.pause_until, f.pause_reason, f.pause_origin = None, "", ""
        emit(f, PauseChanged(None, "", source, at))


def paused(f: Facts, at: float) -> bool:
    """A pause holds: the guest's or the host's (each ends only by its own side or expiry)."""
    return any(u is not None and u > at for u in (f.pause_until, f.host_pause_until))


def pause_ends(f: Facts) -> list[float]:
    return [u for u in (f.pause_until, f.host_pause_until) if u is not None]


def set_host_pause(f: Facts, at: float, ev: PauseEvent) -> None:
    """The operator's pause; the shell refuses more than max_pause, this bounds it anyway."""
    assert ev.duration is not None
    used = min(max(0.0, ev.duration), f.config.max_pause)
    f.host_pause_until, f.host_pause_reason = at + used, clean(ev.reason)
    emit(f, PauseChanged(f.host_pause_until, f.host_pause_reason, ev.source, at,
                         ev.duration if used < ev.duration else None, origin="host"))


def clear_host_pause(f: Facts, at: float, source: str) -> None:
    if f.host_pause_until is not None:
        f.host_pause_until, f.host_pause_reason = None, ""
        emit(f, PauseChanged(None, "", source, at, origin="host"))


def suppress(f: Facts, kind: str, check: Optional[str], why: str, reason: str, at: float,
             loud: bool) -> None:
    if loud:
        f.counters.suppressed[why] += 1
        emit(f, Suppressed(kind, check, why, reason, at))


def notify(f: Facts, kind: str, check: Optional[str], reason: str, at: float,
           loud: bool = True, domain_ok: frozenset = frozenset()) -> None:
    """Notify unless the domain (unless in ``domain_ok``), a pause, an open incident, the
    cooldown or the storm cap forbids it; a notification or a storm-capped failure opens
    the incident."""
    cfg = f.config
    reason = clean(reason)
    if f.domain not in DOMAIN_RUNS and f.domain not in domain_ok:
        return suppress(f, kind, check, f"domain_{f.domain.value}", reason, at, loud)
    if paused(f, at):
        return suppress(f, kind, check, "paused", reason, at, loud)
    if f.incident is not None:
        return suppress(f, kind, check, "open_incident", reason, at, loud)
    if f.cooldown_until is not None and f.cooldown_until > at:
        return suppress(f, kind, check, "cooldown", reason, at, loud)
    while f.notified_at and f.notified_at[0] <= at - cfg.notification_window:
        f.notified_at.popleft()
    if len(f.notified_at) >= cfg.max_notifications:
        f.incident = Incident(kind, check, reason, at, notified=False)
        return suppress(f, kind, check, "storm_cap", reason, at, True)
    f.notified_at.append(at)
    f.incident = Incident(kind, check, reason, at, notified=True)
    f.cooldown_until = at + cfg.cooldown if cfg.cooldown > 0 else None
    f.counters.notified[kind] += 1
    emit(f, Notify(kind, check, reason, at))


# ------------------------------------------------------------ handlers


def on_start(f: Facts, at: float, c: Contact) -> None:
    """A new agent start: forget its incidents, wait min_uptime before hang detection."""
    close_incident(f, "the agent started again", at)
    f.boot_id, f.start_id = c.boot_id, c.start_id
    if c.agent_version is not None:
        f.agent_version = c.agent_version
    set_interval(f, c, at, start=True)
    f.armed = f.interval is not None
    f.departed = False
    f.watch_from = at + f.config.min_uptime
    f.checks = {}
    if not c.pause_known:  # a 0.1.0 agent re-sends its pause after hello
        clear_pause(f, at, "start")
    heard(f, at, c.seq)


def on_hello(f: Facts, at: float, c: Contact) -> None:
    """The same agent repeats itself: nothing but liveness and its interval."""
    set_interval(f, c, at, start=False)
    if c.agent_version is not None:
        f.agent_version = c.agent_version
    f.armed = f.interval is not None
    f.departed = False
    heard(f, at)


def on_heartbeat(f: Facts, at: float, c: Contact) -> None:
    heard(f, at, c.seq)
    f.checks = dict(c.checks)
    set_interval(f, c, at, start=False)
    if f.interval is not None:
        f.armed = True
    else:
        ignore(f, "heartbeat", "before_hello", at)


def on_failure(f: Facts, at: float, ev: CheckEvent) -> None:
    note_check(f, ev.check, "failed")
    notify(f, PROCESS_FAILURE, ev.check, ev.reason, at, ev.fresh)


def on_suppressed_failure(f: Facts, at: float, ev: CheckEvent) -> None:
    note_check(f, ev.check, "failed")
    why = {State.PAUSED: "paused", State.COOLDOWN: "cooldown"}.get(f.state, "open_incident")
    suppress(f, PROCESS_FAILURE, ev.check, why, clean(ev.reason), at, ev.fresh)


def on_recovered(f: Facts, at: float, ev: CheckEvent) -> None:
    note_check(f, ev.check, "ok")
    inc = f.incident
    if inc is not None and inc.kind == PROCESS_FAILURE and inc.check == ev.check:
        close_incident(f, f"check {clean(ev.check, 64)} recovered ({ev.source})", at)


def on_goodbye(f: Facts, at: float, msg: Goodbye) -> None:
    f.armed, f.departed = False, True


def on_pause(f: Facts, at: float, ev: PauseEvent) -> None:
    set_pause(f, at, ev)


def on_resume(f: Facts, at: float, ev: PauseEvent) -> None:
    if f.pause_until is None:
        ignore(f, "resume", "not_paused", at)
    clear_pause(f, at, ev.source)


def on_pause_expired(f: Facts, at: float, ev: None) -> None:
    """The pause that ended goes; the other side's, if any, still holds."""
    if f.pause_until is not None and f.pause_until <= at:
        clear_pause(f, at, "expired")
    if f.host_pause_until is not None and f.host_pause_until <= at:
        clear_host_pause(f, at, "expired")


def on_host_pause(f: Facts, at: float, ev: PauseEvent) -> None:
    set_host_pause(f, at, ev)


def on_host_resume(f: Facts, at: float, ev: PauseEvent) -> None:
    if f.host_pause_until is None:
        ignore(f, "host_resume", "not_paused", at)
    clear_host_pause(f, at, ev.source)


def on_cooldown_expired(f: Facts, at: float, ev: None) -> None:
    f.cooldown_until = None


def on_domain_stop(f: Facts, at: float, ev: None) -> None:
    """This incarnation is over: only the next agent start arms again.  The guest's
    pause ends with it; the host's holds (the operator may be restarting the guest)."""
    f.armed, f.interval = False, None
    f.agent_lost_since, f.held_hang = None, None
    clear_pause(f, at, "domain_stop")


def on_hang(f: Facts, at: float, ev: None) -> None:
    assert f.interval is not None
    late = f.now - at
    if late > f.config.late_tolerance:  # the relay stalled: re-check before notifying
        f.hold_until = f.now + f.interval
        f.counters.late_deadlines += 1
        emit(f, LateDeadline(late, f.hold_until, at))
        return
    reason = hang_reason(f, at)
    if f.hang_hold:  # the host-wide silence guard: this silence is likely the host's
        f.held_hang = at
        f.counters.suppressed["host_silence"] += 1
        emit(f, HangHeld(reason, f.hang_hold, at))
        return
    notify(f, GUEST_HANG, None, reason, at)


def hang_reason(f: Facts, at: float) -> str:
    lost = ("" if f.agent_lost_since is None
            else f"; agent lost, the guest answered {f.witness or 'a witness'} before")
    return (f"no heartbeat for {at - f.base:.1f}s "
            f"(interval {f.interval or 0.0:.3g}s, {f.config.missed_heartbeats} missed{lost})")


def on_hang_released(f: Facts, at: float, ev: None) -> None:
    """The guard let go while this hang was held: notify it now (its own deadline passed)."""
    held, f.held_hang = f.held_hang, None
    if held is None:
        return
    notify(f, GUEST_HANG, None,
           f"{hang_reason(f, held)}; held {at - held:.1f}s by the host-wide silence guard", at)


def witnessed(f: Facts, outcome: str, ev: WitnessEvent) -> None:
    f.witness, f.witness_detail = clean(ev.by, 32), clean(ev.detail)
    f.counters.witness[f"{outcome}:{f.witness}"] += 1


def on_confirmed_hang(f: Facts, at: float, ev: WitnessEvent) -> None:
    """A witness confirms the hang: notify now, naming it; the guard never holds this."""
    witnessed(f, "confirmed_hang", ev)
    f.held_hang = None
    silent = max(0.0, at - f.base)
    notify(f, GUEST_HANG, None,
           f"hang confirmed by {f.witness}: {f.witness_detail or 'no detail'} "
           f"(no heartbeat for {silent:.1f}s)", at,
           domain_ok=DOMAIN_AFTER_PANIC if ev.stops_domain else frozenset())


def on_agent_lost(f: Facts, at: float, ev: WitnessEvent) -> None:
    """The guest answers: hold the hang deadline for one detector window from now; notify
    only if asked (``notify_lost_after``) once the loss lasted that long."""
    assert f.interval is not None
    witnessed(f, "agent_lost", ev)
    first = f.state is not State.AGENT_LOST
    if f.agent_lost_since is None:
        f.agent_lost_since = f.last_heard if f.last_heard is not None else f.base
    f.hold_until = max(f.hold_until, at + f.config.missed_heartbeats * f.interval)
    f.held_hang = None
    emit(f, AgentLost(f.witness or "", f.witness_detail, f.agent_lost_since, f.hold_until,
                      first, at))
    after = ev.notify_lost_after
    if after is not None and at - f.agent_lost_since >= after:
        notify(f, GUEST_HANG, None,
               f"agent lost for {at - f.agent_lost_since:.0f}s while the guest answers "
               f"{f.witness} (notify_on_agent_lost)", at, loud=f.incident is None)


def on_no_witness(f: Facts, at: float, ev: WitnessEvent) -> None:
    """No witness could tell: today's rule decides (a lease from an earlier answer runs out)."""
    witnessed(f, "no_witness", ev)


# ------------------------------------------------------------ guards


def settle(f: Facts, at: float) -> State:
    """The state the facts call for, most binding first."""
    if f.cooldown_until is not None and f.cooldown_until > at:
        return State.COOLDOWN
    if f.departed:  # the agent stopped on purpose: wait for it, incident or not
        return State.DEPARTED
    if f.incident is not None:
        return State.FAILED
    if not f.armed:
        return State.UNKNOWN
    if paused(f, at):
        return State.PAUSED
    return State.ARMED


def watch(f: Facts, at: float) -> State:
    """Settle, with the heartbeat timer fresh from ``at`` and a pause that ended forgotten."""
    fresh_timer(f, at)
    on_pause_expired(f, at, None)
    return settle(f, at)


def after_agent_lost(f: Facts, at: float) -> State:
    """AGENT_LOST, unless the decision notified (notify_on_agent_lost)."""
    state = after_notify(f, at)
    return State.AGENT_LOST if state in (State.ARMED, State.SUSPECT) else state


def after_notify(f: Facts, at: float) -> State:
    """COOLDOWN after a notification, FAILED after a storm-capped one, else stay."""
    if f.cooldown_until is not None and f.cooldown_until > at:
        return State.COOLDOWN
    return State.FAILED if f.incident is not None else f.state


def finite(now: float) -> float:
    now = float(now)
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite number, not {now!r}")
    return now
