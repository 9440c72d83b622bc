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

Probe checks (http, tcp, exec, heartbeat, file) are handed to a
:class:`~guest_agent.probes.probeset.ProbeSet`; :attr:`Monitor.trackers`
lists every check, both kinds, in the configured order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Callable, Optional, Union

from guest_agent.checks import FAILED, CheckTracker, Transition
from guest_agent.config import DEFAULT_NOTIFY_SOCKET, CheckConfig
from guest_agent.probes.probeset import ProbeSet
from guest_agent.probes.state import ProbeTracker
from guest_agent.processes import Identity, Matcher, PsutilSource, scan_for
from guest_agent.reactor import Reactor
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
        reactor: Optional[Reactor] = None,
        notify_socket: str = DEFAULT_NOTIFY_SOCKET,
    ) -> None:
        self._source = source
        self._clock = clock
        self._on_transition = on_transition
        self.watcher = watcher_factory(self._exited)
        self.probes = ProbeSet(reactor, clock, on_transition)
        self.rescan_interval = rescan_interval
        self.trackers: dict[str, Union[CheckTracker, ProbeTracker]] = {}  # every check, in order
        self._procs: dict[str, CheckTracker] = {}  # the process checks
        self._matchers: dict[str, Matcher] = {}
        self._owners: dict[Identity, set[str]] = {}
        self._urgent: set[str] = set()
        self.scans = 0
        now = clock()
        self._next_full = now
        self._next_fast = now
        self.reconfigure(checks, rescan_interval, notify_socket)

    # -- configuration -------------------------------------------------------

    def reconfigure(
        self,
        checks: Sequence[CheckConfig],
        rescan_interval: float,
        notify_socket: str = DEFAULT_NOTIFY_SOCKET,
    ) -> list[str]:
        """Apply a new list of checks; unchanged ones keep their state.  Returns changed names."""
        now = self._clock()
        self.rescan_interval = rescan_interval
        changed = self.probes.reconfigure([c for c in checks if c.is_probe], notify_socket)
        wanted = {c.name: c for c in checks if not c.is_probe}
        for name in list(self._procs):
            if name not in wanted or wanted[name] != self._procs[name].config:
                self._drop(name)
                if name not in changed:
                    changed.append(name)
        procs = {}
        for check in wanted.values():
            tracker = self._procs.get(check.name)
            if tracker is None:
                tracker = CheckTracker(check, now)
                self._matchers[check.name] = Matcher(check)
                self._urgent.add(check.name)
                if check.name not in changed:
                    changed.append(check.name)
            procs[check.name] = tracker
        self._procs = procs
        probes = self.probes.trackers
        self.trackers = {c.name: procs.get(c.name) or probes[c.name] for c in checks}
        self._next_full = min(self._next_full, now + rescan_interval)
        return changed

    def _drop(self, name: str) -> None:
        tracker = self._procs.pop(name)
        self._matchers.pop(name, None)
        self._urgent.discard(name)
        for identity in list(tracker.members):
            self._release(identity, name)

    def close(self) -> None:
        self.watcher.close()
        self.probes.close()

    # -- timing ----------------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        times = [self._next_full]
        if self._urgent:
            times.append(self._clock())
        if any(t.below_min and t.state != FAILED for t in self._procs.values()):
            times.append(self._next_fast)
        times.extend(t.deadline() for t in self._procs.values() if t.deadline() is not None)
        for other in (self.watcher.next_deadline(), self.probes.next_deadline()):
            if other is not None:
                times.append(other)
        return min(times)

    def on_timer(self, now: float) -> None:
        """Do whatever is due at ``now``: polled exits, rescans, grace expiries."""
        self.watcher.on_timer(now)
        self.probes.on_timer(now)
        due: set[str] = set(self._urgent)
        if now >= self._next_full:
            due.update(self._procs)
            self._next_full = now + self.rescan_interval
        if now >= self._next_fast:
            due.update(n for n, t in self._procs.items() if t.below_min and t.state != FAILED)
            self._next_fast = now + GRACE_RESCAN_INTERVAL
        self._urgent.clear()
        if due:
            self.scan(due)
        for tracker in list(self._procs.values()):
            self._emit(tracker.tick(self._clock()))

    # -- detection -----------------------------------------------------------

    def scan(self, names: Optional[Iterable[str]] = None) -> None:
        """Rescan ``names`` (every check by default) and update their trackers."""
        names = [n for n in (names if names is not None else self._procs) if n in self._procs]
        if not names:
            return
        self.scans += 1
        results = scan_for(self._source, [self._matchers[n] for n in names])
        now = self._clock()
        for name in names:
            members, why_none = results[name]
            tracker = self._procs[name]
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
            tracker = self._procs.get(name)
            if tracker is not None:
                self._emit(tracker.exited(identity, now))
                self._urgent.add(name)

    def _emit(self, transition: Optional[Transition]) -> None:
        if transition is not None:
            self._on_transition(transition)
