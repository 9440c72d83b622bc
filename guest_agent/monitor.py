"""Detection: scans, pid watches and check trackers, tied together.

The monitor rescans every ``rescan_interval`` for new and restarted
matches, watches every matched process (see :mod:`guest_agent.watcher`) and
feeds both into one :class:`~guest_agent.checks.CheckTracker` per check.
State changes go to ``on_transition`` as they happen.

When a watched process exits its checks are rescanned on the next loop
turn, not inside the exit handler, so a failure frame goes out before the
~15 ms scan.  A check below ``min_count`` is rescanned every
:data:`GRACE_RESCAN_INTERVAL` so a service manager's restart is seen within
its grace.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Callable, Optional

from guest_agent.checks import FAILED, CheckTracker, Transition
from guest_agent.config import CheckConfig
from guest_agent.processes import Identity, Matcher, PsutilSource, scan_for
from guest_agent.watcher import PidWatcher

LOG = logging.getLogger(__name__)

# Checks below min_count (in grace or starting) are rescanned this often.
GRACE_RESCAN_INTERVAL = 0.5


class Monitor:
    def __init__(
        self,
        checks: Sequence[CheckConfig],
        rescan_interval: float,
        source: PsutilSource,
        watcher_factory: Callable[[Callable[[Identity], None]], PidWatcher],
        clock: Callable[[], float],
        on_transition: Callable[[Transition], None],
    ) -> None:
        self._source = source
        self._clock = clock
        self._on_transition = on_transition
        self.watcher = watcher_factory(self._exited)
        self.rescan_interval = rescan_interval
        self.trackers: dict[str, CheckTracker] = {}
        self._matchers: dict[str, Matcher] = {}
        self._owners: dict[Identity, set[str]] = {}
        self._urgent: set[str] = set()
        self.scans = 0
        now = clock()
        self._next_full = now
        self._next_fast = now
        self.reconfigure(checks, rescan_interval)

    # -- configuration -------------------------------------------------------

    def reconfigure(self, checks: Sequence[CheckConfig], rescan_interval: float) -> list[str]:
        """Apply a new list of checks; unchanged ones keep their state.  Returns changed names."""
        now = self._clock()
        self.rescan_interval = rescan_interval
        wanted = {c.name: c for c in checks}
        changed = []
        for name in list(self.trackers):
            if name not in wanted or wanted[name] != self.trackers[name].config:
                self._drop(name)
                changed.append(name)
        trackers = {}
        for check in checks:  # keep the configured order
            tracker = self.trackers.get(check.name)
            if tracker is None:
                tracker = CheckTracker(check, now)
                self._matchers[check.name] = Matcher(check)
                self._urgent.add(check.name)
                if check.name not in changed:
                    changed.append(check.name)
            trackers[check.name] = tracker
        self.trackers = trackers
        self._next_full = min(self._next_full, now + rescan_interval)
        return changed

    def _drop(self, name: str) -> None:
        tracker = self.trackers.pop(name)
        self._matchers.pop(name, None)
        self._urgent.discard(name)
        for identity in list(tracker.members):
            self._release(identity, name)

    def close(self) -> None:
        self.watcher.close()

    # -- timing ----------------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        times = [self._next_full]
        if self._urgent:
            times.append(self._clock())
        if any(t.below_min and t.state != FAILED for t in self.trackers.values()):
            times.append(self._next_fast)
        times.extend(t.deadline() for t in self.trackers.values() if t.deadline() is not None)
        poll = self.watcher.next_deadline()
        if poll is not None:
            times.append(poll)
        return min(times)

    def on_timer(self, now: float) -> None:
        """Do whatever is due at ``now``: polled exits, rescans, grace expiries."""
        self.watcher.on_timer(now)
        due: set[str] = set(self._urgent)
        if now >= self._next_full:
            due.update(self.trackers)
            self._next_full = now + self.rescan_interval
        if now >= self._next_fast:
            due.update(n for n, t in self.trackers.items() if t.below_min and t.state != FAILED)
            self._next_fast = now + GRACE_RESCAN_INTERVAL
        self._urgent.clear()
        if due:
            self.scan(due)
        for tracker in list(self.trackers.values()):
            self._emit(tracker.tick(self._clock()))

    # -- detection -----------------------------------------------------------

    def scan(self, names: Optional[Iterable[str]] = None) -> None:
        """Rescan ``names`` (every check by default) and update their trackers."""
        names = [n for n in (names if names is not None else self.trackers) if n in self.trackers]
        if not names:
            return
        self.scans += 1
        results = scan_for(self._source, [self._matchers[n] for n in names])
        now = self._clock()
        for name in names:
            members, why_none = results[name]
            tracker = self.trackers[name]
            for identity in set(tracker.members) - set(members):
                self._release(identity, name)
            live = {}
            for identity, desc in members.items():
                if self._hold(identity, name):
                    live[identity] = desc
            self._emit(tracker.observe(live, why_none, now))

    def _hold(self, identity: Identity, name: str) -> bool:
        owners = self._owners.get(identity)
        if owners is None:
            if not self.watcher.watch(identity):
                return False
            owners = self._owners[identity] = set()
        owners.add(name)
        return True

    def _release(self, identity: Identity, name: str) -> None:
        owners = self._owners.get(identity)
        if owners is None:
            return
        owners.discard(name)
        if not owners:
            del self._owners[identity]
            self.watcher.unwatch(identity)

    def _exited(self, identity: Identity) -> None:
        owners = self._owners.pop(identity, set())
        now = self._clock()
        LOG.debug("pid %s exited (checks %s)", identity[0], sorted(owners))
        for name in sorted(owners):
            tracker = self.trackers.get(name)
            if tracker is not None:
                self._emit(tracker.exited(identity, now))
                self._urgent.add(name)

    def _emit(self, transition: Optional[Transition]) -> None:
        if transition is not None:
            self._on_transition(transition)
