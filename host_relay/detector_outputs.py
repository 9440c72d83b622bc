"""What the failure detector returns: typed outputs, its counters and its status.

Every output is a frozen dataclass and says when it happened (``at``, the
detector's monotonic clock).  The detector never logs, counts on /metrics or
writes to disk itself: the relay's channel renders these values into log
lines and counters, and writes :class:`Persist` (together with a
:class:`Notify` from the same call) in one durable transaction.  A shell that
meets an output type it does not know logs it at DEBUG and goes on.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Optional, Union

from host_relay.detector_record import DetectorRecord, Incident

PROCESS_FAILURE = "process_failure"
GUEST_HANG = "guest_hang"


@dataclasses.dataclass(frozen=True)
class Notify:
    """Queue a Masakari notification for this instance (after the durable write)."""

    kind: str  # PROCESS_FAILURE | GUEST_HANG
    check: Optional[str]  # the failed check, None for a hang
    reason: str  # printable, at most MAX_REASON_CHARS
    at: float  # when the failure was established


@dataclasses.dataclass(frozen=True)
class Transitioned:
    """The detector's state changed; ``why`` is the input that changed it."""

    old: enum.Enum
    new: enum.Enum
    why: str
    at: float


@dataclasses.dataclass(frozen=True)
class Ignored:
    """An input the detector did not act on; ``reason`` is a short counter key."""

    what: str
    reason: str
    at: float


@dataclasses.dataclass(frozen=True)
class Persist:
    """The durable part of the detector changed in a way that matters: store ``record``."""

    record: DetectorRecord


@dataclasses.dataclass(frozen=True)
class Suppressed:
    """A failure that would notify but does not: ``why`` is cooldown, storm_cap,
    paused, open_incident or domain_<state>.  Emitted once per failure frame and
    once per check a heartbeat newly reports failed, not on every heartbeat."""

    kind: str
    check: Optional[str]
    why: str
    reason: str
    at: float


@dataclasses.dataclass(frozen=True)
class PauseChanged:
    """The guest's pause began, moved (by more than PAUSE_SLACK), or ended.

    ``until`` is None when it ended; ``source`` is frame, heartbeat, hello,
    start (a new agent start without a pause level), domain_stop or expired.
    ``asked`` is the duration the guest asked for when it was clamped to
    max_pause, else None.  ``origin`` is whose pause it is: "guest" (the agent's)
    or "host" (the operator's `iim-relay pause`; source host or expired)."""

    until: Optional[float]
    reason: str
    source: str
    at: float
    asked: Optional[float] = None
    origin: str = "guest"


@dataclasses.dataclass(frozen=True)
class Started:
    """The agent started (a new boot id or start id) or was first heard; or,
    with ``start=False``, an armed agent changed its interval."""

    boot_id: str
    start_id: str
    agent_version: Optional[str]
    interval: float
    asked_interval: float  # what the guest asked; differs when clamped
    start: bool
    at: float


@dataclasses.dataclass(frozen=True)
class IncidentClosed:
    """An open incident is over: ``why`` says what showed it."""

    kind: str
    check: Optional[str]
    why: str
    at: float


@dataclasses.dataclass(frozen=True)
class LateDeadline:
    """A hang deadline was found ``late`` seconds late (the relay stalled):
    re-checked at ``recheck_at`` instead of notifying."""

    late: float
    recheck_at: float
    at: float


@dataclasses.dataclass(frozen=True)
class AgentLost:
    """The agent is silent but a witness (qemu-ga) shows the guest runs: not a VM failure.

    ``first`` is True for the first decision of this loss (logged at WARNING);
    ``since`` is when the agent was last heard (or the loss began); the hang
    deadline is held until ``hold_until`` unless a witness says so again."""

    by: str
    detail: str
    since: float
    hold_until: float
    first: bool
    at: float


@dataclasses.dataclass(frozen=True)
class HangHeld:
    """The host-wide silence guard holds this instance's hang notification (``why``):
    released when its own witness confirms the hang or the guard lets go."""

    reason: str
    why: str
    at: float


Output = Union[
    Notify, Transitioned, Ignored, Persist, Suppressed, PauseChanged, Started, IncidentClosed,
    LateDeadline, AgentLost, HangHeld,
]


@dataclasses.dataclass
class DetectorCounters:
    """What one detector did since it was created; the shell sums them for /metrics.

    Keys: notified by kind, suppressed by why, ignored by "what:reason",
    clamped by "interval"/"pause"."""

    notified: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # by "outcome:witness": confirmed_hang:qemu-ga, agent_lost:qemu-ga, no_witness:none ...
    witness: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    suppressed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    ignored: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    transitions: int = 0
    persists: int = 0
    late_deadlines: int = 0
    clamped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def copy(self) -> DetectorCounters:
        return DetectorCounters(
            collections.Counter(self.notified), collections.Counter(self.witness),
            collections.Counter(self.suppressed),
            collections.Counter(self.ignored), self.transitions, self.persists,
            self.late_deadlines, collections.Counter(self.clamped),
        )


@dataclasses.dataclass(frozen=True)
class PauseStatus:
    remaining: float
    reason: str
    origin: str


@dataclasses.dataclass(frozen=True)
class DetectorStatus:
    """One detector for ``iim-relay status``, the control socket and metrics."""

    state: enum.Enum
    since: float
    armed: bool
    channel_up: bool
    domain: enum.Enum
    interval: Optional[float]
    hang_after: Optional[float]  # interval x missed_heartbeats
    hang_detection: str  # "active", "held (...)" or "off (state)"
    hang_in: Optional[float]  # seconds until the hang deadline, when it runs
    last_heard_age: Optional[float]
    last_seq: Optional[int]
    cooldown_remaining: Optional[float]
    pause: Optional[PauseStatus]
    checks: tuple[tuple[str, str], ...]
    incident: Optional[Incident]
    notifications_in_window: int
    boot_id: str  # guest-reported, informational only
    start_id: str
    agent_version: Optional[str]
    counters: DetectorCounters
    host_pause: Optional[PauseStatus] = None  # the operator's pause; ``pause`` is the guest's
    witness: Optional[str] = None  # the witness that made the last decision ("qemu-ga" ...)
    witness_detail: str = ""  # its reading
    agent_lost_for: Optional[float] = None  # seconds the agent has been lost (guest alive)
    hang_held: Optional[str] = None  # the host-wide silence guard holds the hang: why
