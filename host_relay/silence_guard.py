"""The host-wide silence guard, sans-I/O: many guests silent at once is the host's fault.

When at least ``min_instances`` and at least ``min_percent`` % of the armed
instances on this host go silent within one ``window``, the likely cause is
the host or the relay (CPU starvation, a stuck libvirtd, a QEMU or kernel
upgrade), not that many guests hanging together.  While the guard is engaged
hang notifications are held; each is released as soon as its own witness
confirms the hang (a panic event, an unanswered guest-ping, stalled vCPUs) or
the condition clears.  Process and probe failures are positive evidence from
the guest and are never held.

Engaging needs a burst (silences that began within ``window``); once engaged,
the guard stays engaged until the instances still silent no longer meet the
thresholds, so a burst that goes on for longer than ``window`` stays held.
The shell renders :class:`GuardChanged` as an ERROR (engaged) or a WARNING
(released), a status field and a metric.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from host_relay.witnesses import Hung, Verdict

GUEST_HANG = "guest_hang"


@dataclasses.dataclass(frozen=True)
class GuardChanged:
    engaged: bool
    silent: int  # instances silent now
    armed: int
    at: float
    why: str


@dataclasses.dataclass(frozen=True)
class GuardStatus:
    engaged: bool
    since: Optional[float]
    silent: int
    armed: int
    held: int  # notifications currently held
    min_instances: int
    min_percent: float


class SilenceGuard:
    def __init__(self, min_instances: int, min_percent: float, window: float) -> None:
        self.min_instances = min_instances
        self.min_percent = min_percent
        self.window = window
        self._silent: dict[str, float] = {}  # uuid -> when it went silent
        self._held: set[str] = set()
        self._armed = 0
        self._engaged_at: Optional[float] = None
        self.engaged_count = 0  # how often it engaged (a counter for /metrics)

    # -- inputs -------------------------------------------------------------------------------

    def set_armed(self, armed: int, now: float) -> list[GuardChanged]:
        """How many instances are armed (heartbeating or expected to) on this host."""
        self._armed = max(0, armed)
        return self._update(now)

    def silent(self, uuid: str, since: float, now: float) -> list[GuardChanged]:
        """``uuid`` has been silent since ``since`` (its last heartbeat)."""
        self._silent.setdefault(uuid, since)
        return self._update(now)

    def heard(self, uuid: str, now: float) -> list[GuardChanged]:
        """``uuid`` is heard again, disarmed, paused or gone: no longer silent."""
        self._silent.pop(uuid, None)
        self._held.discard(uuid)
        return self._update(now)

    def tick(self, now: float) -> list[GuardChanged]:
        return self._update(now)

    # -- the decision -------------------------------------------------------------------------

    def is_silent(self, uuid: str) -> bool:
        return uuid in self._silent

    @property
    def engaged(self) -> bool:
        return self._engaged_at is not None

    def holds(self, uuid: str, kind: str, verdict: Verdict) -> bool:
        """Whether a notification of ``kind`` for ``uuid`` must wait.

        Only hangs are held, and only while engaged and without a witness that
        confirms this very instance hung.
        """
        if kind != GUEST_HANG or not self.engaged or isinstance(verdict, Hung):
            self._held.discard(uuid)
            return False
        self._held.add(uuid)
        return True

    def status(self) -> GuardStatus:
        return GuardStatus(self.engaged, self._engaged_at, len(self._silent), self._armed,
                           len(self._held), self.min_instances, self.min_percent)

    def _meets(self, count: int) -> bool:
        if self._armed <= 0 or count < self.min_instances:
            return False
        return count * 100.0 >= self.min_percent * self._armed - 1e-9

    def needed(self) -> int:
        """Silent instances that would engage the guard with the current armed count."""
        return max(self.min_instances, math.ceil(self.min_percent * self._armed / 100.0 - 1e-9))

    def _update(self, now: float) -> list[GuardChanged]:
        silent = len(self._silent)
        if self._engaged_at is None:
            burst = sum(1 for since in self._silent.values() if since >= now - self.window)
            if self._meets(burst):
                self._engaged_at = now
                self.engaged_count += 1
                return [GuardChanged(True, silent, self._armed, now,
                                     f"{burst} of {self._armed} armed instances went silent "
                                     f"within {self.window:g}s (threshold: at least "
                                     f"{self.min_instances} and {self.min_percent:g}%)")]
            return []
        if not self._meets(silent):
            self._engaged_at = None
            self._held.clear()
            return [GuardChanged(False, silent, self._armed, now,
                                 f"{silent} of {self._armed} armed instances silent now")]
        return []
