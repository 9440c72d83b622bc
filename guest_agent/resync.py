"""What the agent does with the host's ``sync`` requests: sans-I/O, ``now`` passed in.

The relay writes one ``sync`` on every (re)connect; the agent answers at once
with its whole state.  At most one answer per :data:`ANSWER_GAP` seconds: a
sync inside that window is coalesced into one answer at the window's end, so
a host that floods syncs gets one answer a second and nothing more.  Every
other message the host sends is counted and ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from iim_protocol.messages import Message, Sync

ANSWER_GAP = 1.0  # seconds between two answers at most once


@dataclasses.dataclass
class SyncStats:
    """Counters for ``iim-agent status``: what the host asked and what was answered."""

    syncs_received: int = 0
    answers: int = 0
    coalesced: int = 0  # syncs that shared an answer with an earlier one
    ignored: int = 0  # decoded host messages other than sync


class SyncAnswers:
    """Decides when a sync gets its answer.  ``request``/``due`` say "answer now"."""

    def __init__(self, gap: float = ANSWER_GAP) -> None:
        self.gap = gap
        self.stats = SyncStats()
        self._last: Optional[float] = None  # when the last answer went out
        self._pending = False

    def message(self, message: Message, now: float) -> bool:
        """A message from the host; True if the agent should answer now."""
        if not isinstance(message, Sync):
            self.stats.ignored += 1
            return False
        self.stats.syncs_received += 1
        if self._pending:
            self.stats.coalesced += 1
            return False
        if self._last is not None and now < self._last + self.gap:
            self._pending = True
            return False
        return self._answer(now)

    def next_deadline(self) -> Optional[float]:
        """When a coalesced answer is due, or None."""
        if self._pending and self._last is not None:
            return self._last + self.gap
        return None

    def due(self, now: float) -> bool:
        """True once, when a coalesced answer is due (call it from the timer)."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return False
        self._pending = False
        return self._answer(now)

    def _answer(self, now: float) -> bool:
        self._last = now
        self.stats.answers += 1
        return True
