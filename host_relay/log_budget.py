"""A per-instance log budget: each kind of guest-caused line at most once a minute.

Everything a guest sends is hostile input, and that includes the lines the
relay writes about it: a guest sending hello 1,000 times a second, failure
frames before its hello, or garbage must not write gigabytes a day to the
host's log.  Each instance has one :class:`LogBudget`; every line a guest can
cause goes through :meth:`LogBudget.log` with a ``kind``.  The first line of a
kind is logged; the next ones within ``every`` seconds are held back (at
DEBUG only) and counted, and the next line of that kind after the minute says
how many were held back: ``... (12 more suppressed in the last 60 s)``.

The exact counts stay in ``suppressed`` (shown by ``iim-relay status`` and on
/metrics), and the events themselves are counted where they happen (decoder,
detector and channel counters), so nothing is lost but repetition.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

EVERY = 60.0  # seconds between two lines of one kind for one instance
MAX_KINDS = 64  # kinds come from fixed sets; a bound all the same
OTHER = "other"


class LogBudget:
    def __init__(self, every: float = EVERY) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()
        self.suppressed: collections.Counter[str] = collections.Counter()  # exact, since start

    def log(self, logger: logging.Logger, level: int, kind: str, now: float, msg: str,
            *args: Any, **kwargs: Any) -> bool:
        """Log ``msg % args`` unless a line of ``kind`` went out less than ``every`` s ago.

        Returns whether it was logged at ``level``.
        """
        if kind not in self._last and len(self._last) >= MAX_KINDS:
            kind = OTHER
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._held[kind] += 1
            self.suppressed[kind] += 1
            logger.debug(msg, *args, **kwargs)
            return False
        held = self._held.pop(kind, 0)
        if held:
            msg += " (%d more suppressed in the last %.0f s)"
            args = (*args, held, now - last)
        self._last[kind] = now
        logger.log(level, msg, *args, **kwargs)
        return True

    @property
    def total(self) -> int:
        return sum(self.suppressed.values())
