"""The state machine of one check, free of I/O: the caller passes ``now``.

A check is ``starting`` until enough processes match, then ``ok``.  When the
count of matching processes drops below ``min_count`` a grace timer starts;
still below when it expires, the check is ``failed`` (at once when grace is
0).  Coming back to ``min_count`` makes it ``ok`` again.  A check that never
comes up within grace after start fails too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Optional

from guest_agent.config import CheckConfig
from guest_agent.processes import Identity
from iim_protocol.messages import MAX_TEXT_BYTES

LOG = logging.getLogger(__name__)

STARTING = "starting"
OK = "ok"
FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Transition:
    """A check changed state; ``reason`` says why when it failed."""

    check: str
    old: str
    new: str
    reason: str = ""


def _clip(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


class CheckTracker:
    """One check's members and state.  Every method takes ``now`` (monotonic seconds)."""

    def __init__(self, config: CheckConfig, now: float) -> None:
        self.config = config
        self.state = STARTING
        self.members: dict[Identity, str] = {}
        self.since = now  # when the state last changed
        self.below_since: Optional[float] = now  # when the count fell below min_count
        self.reason = ""  # why the check is below min_count (or failed)
        self._loss = ""  # the last member that went away, e.g. "pid 1234 exited"
        self._why_none = "no process matches"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def below_min(self) -> bool:
        return self.below_since is not None

    def deadline(self) -> Optional[float]:
        """When grace expires, if it is running."""
        if self.below_since is None or self.state == FAILED:
            return None
        return self.below_since + self.config.grace

    def observe(
        self, members: Mapping[Identity, str], why_none: str, now: float
    ) -> Optional[Transition]:
        """A fresh scan found ``members``; ``why_none`` explains an empty result."""
        for identity in self.members:
            if identity not in members:
                self._loss = f"pid {identity[0]} is gone"
        self.members = dict(members)
        self._why_none = why_none or "no process matches"
        return self._evaluate(now)

    def exited(self, identity: Identity, now: float) -> Optional[Transition]:
        """A watched member exited (seen by its pidfd or by polling)."""
        if identity not in self.members:
            return None
        del self.members[identity]
        self._loss = f"pid {identity[0]} exited"
        return self._evaluate(now)

    def detail(self, now: float) -> None:
        """Probe details for status; a process check has none."""
        return None

    def tick(self, now: float) -> Optional[Transition]:
        """Let time pass: fail the check when its grace has expired."""
        return self._evaluate(now)

    def _current_reason(self) -> str:
        count, need = len(self.members), self.config.min_count
        label = self.config.label
        if self._loss:
            text = f"{label}: {self._loss}"
            if need > 1:
                text += f" ({count} of {need} running)"
        elif count == 0:
            text = f"{label}: {self._why_none}"
        else:
            text = f"{label}: {count} of {need} running"
        return _clip(text)

    def _evaluate(self, now: float) -> Optional[Transition]:
        if len(self.members) >= self.config.min_count:
            self.below_since = None
            self._loss = ""
            self.reason = ""
            return self._move(OK, now)
        if self.below_since is None:
            self.below_since = now
        self.reason = self._current_reason()
        if self.state != FAILED and now >= self.below_since + self.config.grace:
            return self._move(FAILED, now)
        return None

    def _move(self, new: str, now: float) -> Optional[Transition]:
        if new == self.state:
            return None
        old, self.state, self.since = self.state, new, now
        LOG.info("check %s: %s -> %s %s", self.name, old, new, self.reason)
        return Transition(self.name, old, new, self.reason if new == FAILED else "")
