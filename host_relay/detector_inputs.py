"""What the failure detector's table is fed: its inputs, and the inputs a message means.

A heartbeat is the agent's whole state, so :func:`feed_message` turns it into
the same inputs a hello (or a start), a pause or resume, a recovered and a
failure frame would be: the level and the edge take one path through
``detector_table.TABLE``.  A 0.1.0 agent sends no level (no interval, boot
id, start id or pause in its heartbeats): its frames stay the only edges.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, Optional

from host_relay.detector_outputs import PROCESS_FAILURE
from host_relay.detector_rules import Facts, clean
from iim_protocol.messages import Failure, Goodbye, Heartbeat, Hello, Pause, Recovered, Resume


class Input(enum.Enum):
    START = "start"  # hello/heartbeat naming a new boot id or start id (or the first one)
    HELLO = "hello"  # a hello from the agent already known: periodic or after a reconnect
    HEARTBEAT = "heartbeat"
    FAILURE = "failure"  # failure frame, or a check a heartbeat reports failed
    RECOVERED = "recovered"  # recovered frame, or the open incident's check reported ok
    GOODBYE = "goodbye"
    PAUSE = "pause"  # pause frame, or a heartbeat/hello carrying a pause
    RESUME = "resume"  # resume frame, or a pause level of nil while paused
    HOST_PAUSE = "host_pause"  # the operator's pause (`iim-relay pause`): never from the guest
    HOST_RESUME = "host_resume"  # the operator's resume: ends the host pause only
    CONNECTED = "channel_connected"
    CLOSED = "channel_closed"
    DOMAIN_UP = "domain_running"  # RUNNING/UNKNOWN after any other domain state
    DOMAIN_HOLD = "domain_held"  # PAUSED or MIGRATING
    DOMAIN_STOP = "domain_stopped"  # SHUTDOWN, SHUTOFF, CRASHED: this incarnation is over
    LAST_INTERVAL = "last_interval"  # timers, fed at their deadline
    HANG_DEADLINE = "hang_deadline"
    PAUSE_EXPIRED = "pause_expired"
    COOLDOWN_EXPIRED = "cooldown_expired"
    # The host's witnesses (host_relay.witness_decision), decided by the shell:
    WITNESS_HUNG = "witness_hung"  # a witness confirms the hang (panic, unanswered ping ...)
    WITNESS_ALIVE = "witness_alive"  # the guest answers: only iim's agent is lost
    WITNESS_UNKNOWN = "witness_unknown"  # no witness could tell: today's rule decides
    HANG_RELEASED = "hang_released"  # the host-wide silence guard let go of a held hang


@dataclasses.dataclass(frozen=True)
class Contact:
    """What a hello or heartbeat says about the agent; absent fields are None/""."""

    interval: Optional[float]
    boot_id: str
    start_id: str
    agent_version: Optional[str]
    pause_known: bool
    seq: Optional[int] = None
    checks: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class CheckEvent:
    check: str
    reason: str
    source: str  # "frame" | "heartbeat"
    fresh: bool  # a frame, or a check not failed in the previous heartbeat


@dataclasses.dataclass(frozen=True)
class PauseEvent:
    duration: Optional[float]  # None: resume
    reason: str
    source: str  # "frame" | "heartbeat" | "hello" | "host"



@dataclasses.dataclass(frozen=True)
class WitnessEvent:
    """What the host's witnesses decided about a silent instance (or a panic event).

    ``by`` names the witness that decided (panic, watchdog, io_error, qemu-ga,
    vcpu ...; "none" for no witness); ``detail`` is its reading, host text.
    ``notify_lost_after``: for an alive guest, notify once the agent has been
    lost this long (``[witnesses] notify_on_agent_lost``), or None: never.
    ``stops_domain``: the event itself pauses or stops the domain (a guest
    panic: libvirt's SUSPENDED may come before its CRASHED), so a paused or
    crashed domain does not hold this notification as it holds a hang.
    """

    by: str
    detail: str = ""
    notify_lost_after: Optional[float] = None
    stops_domain: bool = False


def contact_of(msg: Hello | Heartbeat) -> Contact:
    if isinstance(msg, Hello):
        return Contact(msg.heartbeat_interval, msg.boot_id, msg.start_id, msg.agent_version,
                       msg.pause_known)
    return Contact(msg.interval, msg.boot_id, msg.start_id, None, msg.pause_known, msg.seq,
                   msg.checks)


def is_start(f: Facts, c: Contact) -> bool:
    """A new boot id or start id is a start; a 0.1.0 heartbeat (no boot id) never is."""
    return bool(c.boot_id) and (c.boot_id, c.start_id) != (f.boot_id, f.start_id)


def feed_message(f: Facts, msg: Any, dispatch: Callable[[Input, Any], bool]) -> None:
    """Dispatch the inputs one message means, in order; stop when the first is ignored."""
    if isinstance(msg, Hello):
        c = contact_of(msg)
        if dispatch(Input.START if is_start(f, c) else Input.HELLO, c):
            _pause_level(f, msg, "hello", dispatch)
    elif isinstance(msg, Heartbeat):
        c = contact_of(msg)
        if is_start(f, c) and c.interval is not None:  # its hello was lost
            dispatch(Input.START, c)
        before = f.checks
        if not dispatch(Input.HEARTBEAT, c):
            return
        _pause_level(f, msg, "heartbeat", dispatch)
        inc = f.incident
        if inc is not None and inc.kind == PROCESS_FAILURE and f.checks.get(inc.check) == "ok":
            dispatch(Input.RECOVERED, CheckEvent(inc.check, "", "heartbeat", True))
        for name, st in c.checks:
            if st == "failed":
                reason = f"check {clean(name, 64)} reported failed by a heartbeat"
                fresh = before.get(name) != "failed"
                dispatch(Input.FAILURE, CheckEvent(name, reason, "heartbeat", fresh))
    elif isinstance(msg, Failure):
        reason = f"check {clean(msg.check, 64)} failed: {clean(msg.reason)}"
        dispatch(Input.FAILURE, CheckEvent(msg.check, reason, "frame", True))
    elif isinstance(msg, Recovered):
        dispatch(Input.RECOVERED, CheckEvent(msg.check, "", "frame", True))
    elif isinstance(msg, Goodbye):
        dispatch(Input.GOODBYE, msg)
    elif isinstance(msg, Pause):
        dispatch(Input.PAUSE, PauseEvent(msg.duration, msg.reason, "frame"))
    elif isinstance(msg, Resume):
        dispatch(Input.RESUME, PauseEvent(None, "", "frame"))


def _pause_level(f: Facts, msg: Any, source: str, dispatch) -> None:
    """A pause level, when the message has one (0.1.0 agents: absent, edges only)."""
    if not msg.pause_known:
        return
    pause = msg.pause
    if pause is None:
        if f.pause_until is not None:
            dispatch(Input.RESUME, PauseEvent(None, "", source))
    else:
        dispatch(Input.PAUSE, PauseEvent(pause.remaining, pause.reason, source))
