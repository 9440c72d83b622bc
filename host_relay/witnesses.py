"""The host's witnesses for a silent instance, sans-I/O: readings in, a verdict out.

When an instance's agent goes silent the relay cannot tell from the silence
alone whether the guest hung or only iim's agent died.  The host can ask
others (issue 12):

- libvirt events that are evidence by themselves: a guest panic (pvpanic makes
  libvirt report a CRASHED lifecycle event), a watchdog action, an I/O error;
- the guest's qemu-guest-agent, pinged through libvirt (``guest-ping``): it
  answers, so the guest runs and only iim's agent is gone; it times out while
  its port is open, so the guest is hung;
- guest progress from libvirt's bulk domain stats: a running domain whose
  vCPUs used no time at all is stuck; disk or network I/O means it still does
  something (the veto vSphere's I/O check applies before resetting a VM).

Every reading degrades to :class:`Unknown` with the reason, never to a guess:
no qemu-ga channel, an agent that is not connected, a libvirt without bulk
stats.  The libvirt calls themselves live in :mod:`host_relay.witness_libvirt`;
here every function takes plain values and ``now``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional, Union

__all__ = [
    "Alive", "EventEvidence", "Hung", "PingOutcome", "PingReading", "ProgressSample",
    "ProgressTracker", "Unknown", "Verdict", "combine", "event_evidence", "ping_verdict",
]

# Witness names, as logged and shown in status ("which witness decided").
PANIC = "panic"
WATCHDOG = "watchdog"
IO_ERROR = "io_error"
GUEST_AGENT = "guest_agent"
PROGRESS = "progress"


@dataclasses.dataclass(frozen=True)
class Hung:
    """A witness confirms the guest is hung (or crashed)."""

    by: str
    detail: str = ""

    def describe(self) -> str:
        return f"hung ({self.by}: {self.detail})" if self.detail else f"hung ({self.by})"


@dataclasses.dataclass(frozen=True)
class Alive:
    """A witness shows the guest still runs: only iim's agent is silent."""

    by: str
    detail: str = ""

    def describe(self) -> str:
        return f"alive ({self.by}: {self.detail})" if self.detail else f"alive ({self.by})"


@dataclasses.dataclass(frozen=True)
class Unknown:
    """No witness could tell; ``why`` says what was missing."""

    why: str

    def describe(self) -> str:
        return f"unknown ({self.why})"


Verdict = Union[Hung, Alive, Unknown]


# -- libvirt events ----------------------------------------------------------------------------

# libvirt's enum values (libvirt-domain.h), so this module needs no libvirt import.
LIFECYCLE_CRASHED = 8  # VIR_DOMAIN_EVENT_CRASHED
CRASHED_DETAILS = {0: "panicked", 1: "crashloaded"}  # VIR_DOMAIN_EVENT_CRASHED_*
WATCHDOG_ACTIONS = {0: "none", 1: "pause", 2: "reset", 3: "poweroff", 4: "shutdown",
                    5: "debug", 6: "inject-nmi"}  # VIR_DOMAIN_EVENT_WATCHDOG_*
IO_ERROR_ACTIONS = {0: "none", 1: "pause", 2: "report"}  # VIR_DOMAIN_EVENT_IO_ERROR_*


@dataclasses.dataclass(frozen=True)
class EventEvidence:
    """One libvirt event that is evidence of a failed guest by itself."""

    by: str  # PANIC, WATCHDOG or IO_ERROR
    detail: str
    at: float

    def verdict(self) -> Hung:
        return Hung(self.by, self.detail)


def event_evidence(kind: str, at: float, *, event: int = -1, detail: int = -1,
                   action: int = -1, reason: str = "", device: str = "") -> Optional[EventEvidence]:
    """The evidence in a libvirt event callback's arguments, or None if it is none.

    ``kind`` is "lifecycle", "watchdog" or "io_error" (which callback it came from).
    """
    if kind == "lifecycle":
        if event != LIFECYCLE_CRASHED:
            return None
        return EventEvidence(PANIC, CRASHED_DETAILS.get(detail, f"crashed detail {detail}"), at)
    if kind == "watchdog":
        return EventEvidence(WATCHDOG, "action " + WATCHDOG_ACTIONS.get(action, str(action)), at)
    if kind == "io_error":
        what = f"{device or 'a disk'}: {reason or 'error'}"
        return EventEvidence(IO_ERROR, f"{what}, action {IO_ERROR_ACTIONS.get(action, action)}",
                             at)
    raise ValueError(f"unknown event kind {kind!r}")


# -- qemu-guest-agent ping ---------------------------------------------------------------------

class PingOutcome(enum.Enum):
    ANSWERED = "answered"          # guest-ping returned: the guest's userspace runs
    TIMED_OUT = "timed_out"        # the port is open and nothing answered within the timeout
    NOT_CONNECTED = "not_connected"  # no qemu-ga has the port open (not running, or rebooting)
    NO_CHANNEL = "no_channel"      # the domain has no org.qemu.guest_agent.0 channel
    ERROR = "error"                # anything else libvirt said (domain gone, libvirt down, ...)


@dataclasses.dataclass(frozen=True)
class PingReading:
    outcome: PingOutcome
    took: float  # seconds the call blocked
    detail: str = ""


def ping_verdict(reading: PingReading) -> Verdict:
    """What one guest-ping says about the guest."""
    took = f"{reading.took:.2f}s"
    if reading.outcome is PingOutcome.ANSWERED:
        return Alive(GUEST_AGENT, f"guest-ping answered in {took}")
    if reading.outcome is PingOutcome.TIMED_OUT:
        return Hung(GUEST_AGENT, f"guest-ping unanswered after {took}")
    if reading.outcome is PingOutcome.NOT_CONNECTED:
        # qemu-ga closed its port: stopped in a running guest, or the guest is rebooting.
        return Unknown("qemu-guest-agent is not connected")
    if reading.outcome is PingOutcome.NO_CHANNEL:
        return Unknown("no qemu-guest-agent channel")
    return Unknown(f"guest-ping failed: {reading.detail or 'error'}")


# -- guest progress (bulk stats) ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ProgressSample:
    """One instance's counters from one getAllDomainStats call (None: not reported)."""

    vcpu_ns: Optional[int]  # sum of vcpu.N.time
    block_ops: Optional[int]  # sum of block.N.rd.reqs + wr.reqs
    net_packets: Optional[int]  # sum of net.N.rx.pkts + tx.pkts

    @classmethod
    def from_stats(cls, stats: dict) -> ProgressSample:
        """Build from one domain's record of virConnectGetAllDomainStats."""
        def total(prefix: str, count_key: str, fields: tuple[str, ...]) -> Optional[int]:
            count = stats.get(count_key)
            if not isinstance(count, int):
                return None
            found, value = False, 0
            for i in range(min(count, 4096)):
                for field in fields:
                    v = stats.get(f"{prefix}.{i}.{field}")
                    if isinstance(v, int):
                        found, value = True, value + v
            return value if found or count == 0 else None
        return cls(vcpu_ns=total("vcpu", "vcpu.current", ("time",)),
                   block_ops=total("block", "block.count", ("rd.reqs", "wr.reqs")),
                   net_packets=total("net", "net.count", ("rx.pkts", "tx.pkts")))


@dataclasses.dataclass
class _Progress:
    sample: ProgressSample
    at: float
    vcpu_moved_at: float  # the last reading in which the vCPUs used time (or the first one)
    # The reading before the last one in which block or network counters moved: that I/O
    # happened after it, not necessarily after anything earlier (-inf: never moved).
    io_after: float


class ProgressTracker:
    """The last progress of every instance, fed with bulk stats readings.

    ``vcpu_stall`` is how long a running domain's vCPUs may use no time at all
    before that alone says it is stuck: an idle Linux guest still takes timer
    interrupts, so its vCPU time grows every second.
    """

    def __init__(self, vcpu_stall: float) -> None:
        self.vcpu_stall = vcpu_stall
        self._last: dict[str, _Progress] = {}

    def feed(self, samples: dict[str, ProgressSample], now: float) -> None:
        """One reading for all domains; instances not in it are forgotten."""
        for uuid in list(self._last):
            if uuid not in samples:
                del self._last[uuid]
        for uuid, sample in samples.items():
            prev = self._last.get(uuid)
            if prev is None:
                self._last[uuid] = _Progress(sample, now, now, float("-inf"))
                continue
            if _moved(prev.sample.vcpu_ns, sample.vcpu_ns):
                prev.vcpu_moved_at = now
            if _moved(prev.sample.block_ops, sample.block_ops) or _moved(
                    prev.sample.net_packets, sample.net_packets):
                prev.io_after = prev.at
            prev.sample, prev.at = sample, now

    def forget(self, uuid: str) -> None:
        self._last.pop(uuid, None)

    def io_since(self, uuid: str, since: float) -> Optional[bool]:
        """Whether the guest did disk or network I/O after ``since`` (None: no reading since).

        Only counters that moved between two readings both taken at or after
        ``since`` count: a reading that spans the moment the guest went silent
        cannot tell I/O done before it (a panicked guest's last journal write)
        from I/O done after.
        """
        p = self._last.get(uuid)
        if p is None or p.at <= since:
            return None
        return p.io_after >= since

    def verdict(self, uuid: str, silent_since: float, now: float) -> Verdict:
        p = self._last.get(uuid)
        if p is None:
            return Unknown("no bulk stats for this domain")
        if p.sample.vcpu_ns is None:
            return Unknown("bulk stats without vCPU time")
        if p.at <= silent_since:
            return Unknown("no bulk stats since the silence began")
        stalled = p.at - p.vcpu_moved_at
        if stalled >= self.vcpu_stall:
            return Hung(PROGRESS, f"vCPUs used no time for {stalled:.1f}s")
        if self.io_since(uuid, silent_since):
            return Unknown("the guest still does disk or network I/O")
        return Unknown("vCPUs run; progress alone cannot tell")


def _moved(old: Optional[int], new: Optional[int]) -> bool:
    return old is not None and new is not None and new != old


# -- the decision ------------------------------------------------------------------------------

def combine(*, event: Optional[EventEvidence], ping: Optional[PingReading],
            progress: Verdict, io_moved: Optional[bool], silent_since: float) -> Verdict:
    """One verdict from every witness, strongest first.

    1. a panic, watchdog or I/O-error event since the silence began: hung;
    2. qemu-ga answered: alive (only iim's agent is gone);
    3. qemu-ga timed out with its port open: hung, unless the guest still does
       disk or network I/O (a guest that writes is not hung, whatever its agent does);
    4. vCPUs that used no time at all: hung;
    5. otherwise unknown, with every witness's reason, and the caller keeps today's rule.
    """
    if event is not None and event.at >= silent_since:
        return event.verdict()
    reasons = []
    if ping is not None:
        verdict = ping_verdict(ping)
        if isinstance(verdict, Alive):
            return verdict
        if isinstance(verdict, Hung):
            if io_moved:
                reasons.append("guest-ping timed out but the guest does I/O")
            else:
                return verdict
        else:
            reasons.append(verdict.why)
    else:
        reasons.append("qemu-guest-agent not asked")
    if isinstance(progress, Hung):
        return progress
    if isinstance(progress, Unknown):
        reasons.append(progress.why)
    return Unknown("; ".join(reasons))
