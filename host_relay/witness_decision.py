"""What a silent instance's witnesses decide, sans-I/O: one record per silent instance.

The detector's own rule (``missed_heartbeats`` intervals of silence) stays
as it is; this class adds the fast path and the veto the witnesses allow
(issue 12):

- silent for ``confirmed_hang_after`` (and at least two heartbeat
  intervals): :meth:`ask_due` says to read the witnesses (the shell pings
  qemu-ga off the event loop and combines the readings with
  :func:`host_relay.witnesses.combine`);
- the verdict is :class:`Hung`: report the hang now, naming the witness;
- it is :class:`Alive` (qemu-ga answers): "agent lost", not a VM failure:
  a WARNING once, a status state and a metric; the detector's own hang
  rule is vetoed while the guest keeps answering; a notification only if
  ``notify_on_agent_lost`` and the loss lasted ``agent_lost_timeout``;
- it is :class:`Unknown`: no witness; the detector's rule applies unchanged.

Witnesses are asked again every ``reask`` seconds while the silence lasts,
so a guest whose qemu-ga stops answering later is still caught.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

from host_relay.settings import WitnessSettings
from host_relay.witnesses import Alive, Hung, Unknown, Verdict


class Outcome(enum.Enum):
    CONFIRMED_HANG = "confirmed_hang"  # notify guest_hang now (unless the silence guard holds it)
    AGENT_LOST = "agent_lost"  # the guest runs; only iim's agent is silent: no notification
    AGENT_LOST_NOTIFY = "agent_lost_notify"  # asked for (notify_on_agent_lost), after the timeout
    NO_WITNESS = "no_witness"  # today's rule decides


@dataclasses.dataclass(frozen=True)
class Decision:
    outcome: Outcome
    verdict: Verdict
    at: float
    first: bool  # the first decision of this kind in this silence (log it at WARNING)

    @property
    def by(self) -> str:
        return getattr(self.verdict, "by", "none")

    @property
    def vetoes_hang(self) -> bool:
        """Whether the detector's own hang rule must not notify (the guest answers)."""
        return self.outcome is Outcome.AGENT_LOST


class SilenceJudge:
    """Per instance: when to ask the witnesses, and what their verdict means."""

    def __init__(self, settings: WitnessSettings) -> None:
        self.settings = settings
        self._silent_since: Optional[float] = None
        self._asked_at: Optional[float] = None
        self._lost_since: Optional[float] = None
        self._last: Optional[Decision] = None
        self._notified_lost = False

    def heard(self) -> None:
        """The agent spoke (or the instance was disarmed, paused, stopped): start over."""
        self._silent_since = self._asked_at = self._lost_since = self._last = None
        self._notified_lost = False

    def reask(self, interval: float) -> float:
        return max(interval, float(self.settings.agent_ping_timeout))

    def ask_due(self, last_heard: float, interval: float, now: float) -> bool:
        """Whether the shell should read the witnesses now."""
        if not self.settings.enabled:
            return False
        if now - last_heard < max(self.settings.confirmed_hang_after, 2 * interval):
            return False
        if self._silent_since is None:
            self._silent_since = last_heard
        return self._asked_at is None or now - self._asked_at >= self.reask(interval)

    def next_ask(self, last_heard: float, interval: float) -> float:
        """When :meth:`ask_due` will next say yes (for the shell's timer)."""
        first = last_heard + max(self.settings.confirmed_hang_after, 2 * interval)
        if self._asked_at is None:
            return first
        return max(first, self._asked_at + self.reask(interval))

    def verdict(self, verdict: Verdict, now: float) -> Decision:
        """The witnesses' combined verdict, read at ``now``."""
        self._asked_at = now
        previous = self._last.outcome if self._last else None
        if isinstance(verdict, Hung):
            outcome = Outcome.CONFIRMED_HANG
        elif isinstance(verdict, Alive):
            if self._lost_since is None:
                self._lost_since = self._silent_since if self._silent_since is not None else now
            outcome = Outcome.AGENT_LOST
            s = self.settings
            if (s.notify_on_agent_lost and not self._notified_lost
                    and now - self._lost_since >= s.agent_lost_timeout):
                outcome = Outcome.AGENT_LOST_NOTIFY
                self._notified_lost = True
        else:
            assert isinstance(verdict, Unknown)
            outcome = Outcome.NO_WITNESS
        self._last = Decision(outcome, verdict, now, first=outcome is not previous)
        return self._last

    @property
    def silent_since(self) -> Optional[float]:
        """The silence the judge follows (set when it is first due), or None."""
        return self._silent_since

    @property
    def last(self) -> Optional[Decision]:
        return self._last

    def agent_lost_for(self, now: float) -> Optional[float]:
        return None if self._lost_since is None else now - self._lost_since
