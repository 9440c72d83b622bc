"""The state of one probe check, free of I/O: results and beats in, transitions out.

A probe check is ``starting`` until its first good probe, then ``ok``.
``failures`` failed probes in a row make it ``failed``; ``successes`` good
ones in a row make it ``ok`` again.  A heartbeat check fails when no beat
came for ``timeout`` (counted from the check's start plus ``start_delay``
before the first beat); any beat makes it ok again.  The tracker has the
same face as :class:`guest_agent.checks.CheckTracker` (name, state, reason,
since, members, deadline, tick) so the agent reports both kinds alike.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from guest_agent.checks import FAILED, OK, STARTING, Transition, _clip
from guest_agent.config import CheckConfig

LOG = logging.getLogger(__name__)

MAX_SEEN_BYTES = 160  # what one probe saw, before the "(3 in a row)" suffix
MAX_APP_STATUS_BYTES = 80  # the last STATUS= of a heartbeat sender, inside a reason


def secs(seconds: float) -> str:
    """Seconds for a reason: ``2``, ``0.3``, ``31``."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}"


class ProbeTracker:
    """One probe check.  Every method takes ``now`` (monotonic seconds)."""

    def __init__(self, config: CheckConfig, now: float) -> None:
        self.config = config
        self.state = STARTING
        self.since = now
        self.started = now
        self.reason = ""
        self.members: dict[Any, str] = {}  # a probe watches no process
        self.below_min = False
        self.in_a_row = 0  # failed (< 0) or good (> 0) probes in a row
        self.probes = 0
        self.last_seen = ""  # what the last probe saw, e.g. "HTTP 200 in 0.01 s"
        self.last_at: Optional[float] = None
        self.last_beat: Optional[float] = None
        self.app_status = ""  # heartbeat: the sender's last STATUS=

    @property
    def name(self) -> str:
        return self.config.name

    def deadline(self) -> Optional[float]:
        """No grace timer: the probe set keeps a probe's own times."""
        return None

    def tick(self, now: float) -> Optional[Transition]:
        return None

    # -- probes ------------------------------------------------------------------

    def result(self, ok: bool, seen: str, now: float) -> Optional[Transition]:
        """A probe finished: ``ok`` and what it ``seen`` (the reason when it failed)."""
        self.probes += 1
        self.last_seen = _clip(seen, MAX_SEEN_BYTES)
        self.last_at = now
        if ok:
            self.in_a_row = max(self.in_a_row, 0) + 1
            need = self.config.successes if self.state == FAILED else 1
            if self.state != OK and self.in_a_row >= need:
                self.reason = ""
                return self._move(OK, now)
            return None
        self.in_a_row = min(self.in_a_row, 0) - 1
        misses = -self.in_a_row
        if misses >= self.config.failures:
            self.reason = self._failure_reason(misses)
            return self._move(FAILED, now)
        return None

    def fail_now(self, seen: str, now: float) -> Optional[Transition]:
        """The application itself says it failed (``WATCHDOG=trigger``)."""
        self.in_a_row = -self.config.failures
        self.last_seen, self.last_at = _clip(seen, MAX_SEEN_BYTES), now
        self.reason = self._failure_reason(1)
        return self._move(FAILED, now)

    def _failure_reason(self, misses: int) -> str:
        text = self.last_seen
        if self.app_status:
            text += f" (last STATUS: {self.app_status})"
        if misses > 1:
            text += f", {misses} in a row"
        return _clip(text)

    # -- heartbeats --------------------------------------------------------------

    def beat_deadline(self) -> float:
        """When a heartbeat check fails without a beat."""
        if self.last_beat is None:
            return self.started + self.config.start_delay + self.config.timeout
        return self.last_beat + self.config.timeout

    def beat(self, now: float, app_status: Optional[str] = None) -> Optional[Transition]:
        self.last_beat = now
        if app_status is not None:
            self.app_status = _clip(app_status, MAX_APP_STATUS_BYTES)
        return self.result(True, "heartbeat", now)

    def check_beat(self, now: float) -> Optional[Transition]:
        """Fail a heartbeat check whose beat is overdue."""
        if self.state == FAILED or now < self.beat_deadline():
            return None
        if self.last_beat is None:
            seen = f"no heartbeat since the check started {secs(now - self.started)} s ago"
        else:
            seen = f"no heartbeat for {secs(now - self.last_beat)} s"
        return self.result(False, seen, now)

    def app_set_status(self, text: str) -> None:
        self.app_status = _clip(text, MAX_APP_STATUS_BYTES)

    # -- reporting -----------------------------------------------------------------

    def detail(self, now: float) -> dict[str, Any]:
        """What ``iim-agent status`` shows about the probe besides state and reason."""
        c = self.config
        out: dict[str, Any] = {
            "probe": c.kind,
            "probes": self.probes,
            "last": self.last_seen or None,
            "last_age": None if self.last_at is None else round(now - self.last_at, 3),
            "failed_in_a_row": max(0, -self.in_a_row),
            "good_in_a_row": max(0, self.in_a_row),
            "timeout": c.timeout,
        }
        if c.kind == "heartbeat":
            out["beat_age"] = None if self.last_beat is None else round(now - self.last_beat, 3)
            out["app_status"] = self.app_status or None
        else:
            out["period"] = c.period
        if c.kind == "file":
            out["max_age"] = c.max_age
        elif c.kind != "heartbeat":
            out["failures"], out["successes"] = c.failures, c.successes
        return out

    def _move(self, new: str, now: float) -> Optional[Transition]:
        if new == self.state:
            return None
        old, self.state, self.since = self.state, new, now
        LOG.info("check %s: %s -> %s %s", self.name, old, new, self.reason)
        return Transition(self.name, old, new, self.reason if new == FAILED else "")
