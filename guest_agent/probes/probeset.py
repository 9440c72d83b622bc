"""All probe checks of the agent: when each probe runs, and what its result changes.

Each probe check has one :class:`Slot`: its tracker (the state), when its
next probe is due and the attempt in flight.  Probes start every ``period``
counted from the first one (``start_delay`` after the check was added), so
a slow probe never shifts the schedule; ``timeout`` < ``period`` keeps at
most one in flight.  A probe that hangs costs its own timeout and nothing
else: the loop only ever waits in poll().  Heartbeat checks have no
attempts: beats arrive on the notify socket (:mod:`.notify`) and the slot
only watches the deadline.  A file check is looked at again the moment its
stamp would become too old, not only every period.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Callable, Optional

from guest_agent.checks import FAILED, Transition
from guest_agent.config import DEFAULT_NOTIFY_SOCKET, CheckConfig
from guest_agent.probes.execprobe import ExecAttempt, user_ids
from guest_agent.probes.notify import NotifyServer
from guest_agent.probes.offload import Offload
from guest_agent.probes.runners import Attempt, FileAttempt, HttpAttempt, TcpAttempt
from guest_agent.probes.state import ProbeTracker
from guest_agent.reactor import Reactor

LOG = logging.getLogger(__name__)

REFUSED_LOG_INTERVAL = 60.0  # refused heartbeat datagrams: one log line a minute at most

ATTEMPTS: dict[str, type[Attempt]] = {
    "http": HttpAttempt,
    "tcp": TcpAttempt,
    "exec": ExecAttempt,
    "file": FileAttempt,
}


@dataclasses.dataclass
class Slot:
    """One probe check at run time."""

    tracker: ProbeTracker
    next_start: float
    attempt: Optional[Attempt] = None  # in flight
    lingering: Optional[Attempt] = None  # finished, but its process or thread is not gone
    uid: Optional[int] = None  # heartbeat: the `user` allowed to beat it

    @property
    def config(self) -> CheckConfig:
        return self.tracker.config


class ProbeSet:
    def __init__(self, reactor: Optional[Reactor], clock: Callable[[], float],
                 on_transition: Callable[[Transition], None]) -> None:
        self._reactor = reactor or Reactor()
        self._clock = clock
        self._on_transition = on_transition
        self._offload = Offload(self._reactor)
        self.slots: dict[str, Slot] = {}
        self.notify: Optional[NotifyServer] = None
        self.notify_path = DEFAULT_NOTIFY_SOCKET
        # The socket is bound on the first timer, once the agent's run() has made sure no
        # other agent runs (its control socket): binding replaces any socket at the path.
        self._notify_mode: Optional[int] = None  # wanted and not bound yet
        self.refused = 0
        self._refused_logged = -REFUSED_LOG_INTERVAL

    @property
    def trackers(self) -> Mapping[str, ProbeTracker]:
        return {name: slot.tracker for name, slot in self.slots.items()}

    # -- configuration -------------------------------------------------------

    def reconfigure(self, checks: Sequence[CheckConfig],
                    notify_path: str = DEFAULT_NOTIFY_SOCKET) -> list[str]:
        """Apply the probe checks; unchanged ones keep state and schedule.  Returns changed."""
        now = self._clock()
        wanted = {c.name: c for c in checks}
        changed = []
        for name in list(self.slots):
            if wanted.get(name) != self.slots[name].config:
                self._drop(name)
                changed.append(name)
        slots = {}
        for check in checks:
            slot = self.slots.get(check.name)
            if slot is None:
                slot = Slot(ProbeTracker(check, now), now + check.start_delay)
                if check.name not in changed:
                    changed.append(check.name)
            if check.kind == "heartbeat":
                slot.uid = self._uid(check)
            slots[check.name] = slot
        self.slots = slots
        self._configure_notify(notify_path)
        return changed

    def _uid(self, check: CheckConfig) -> Optional[int]:
        if not check.user:
            return None
        try:
            return user_ids(check.user)[0]
        except KeyError:
            LOG.warning("check %s: user %s does not exist: only root may send its heartbeats",
                        check.name, check.user)
            return None

    def _configure_notify(self, path: str) -> None:
        beats = [s for s in self.slots.values() if s.config.kind == "heartbeat"]
        mode = 0o622 if any(s.config.user for s in beats) else 0o600
        if self.notify is not None and (not beats or path != self.notify.path):
            self.notify.close()
            self.notify = None
        self.notify_path = path
        self._notify_mode = None
        if self.notify is not None:
            self.notify.set_mode(mode)
        elif beats:
            self._notify_mode = mode

    def _start_notify(self) -> None:
        mode, self._notify_mode = self._notify_mode, None
        assert mode is not None
        server = NotifyServer(self.notify_path, mode, self._reactor, self._on_datagram)
        try:
            server.start()
        except OSError as exc:
            LOG.error("heartbeat socket %s unusable: %s; heartbeat checks will fail",
                      self.notify_path, exc)
            return
        self.notify = server

    def _drop(self, name: str) -> None:
        slot = self.slots.pop(name)
        for attempt in (slot.attempt, slot.lingering):
            if attempt is not None:
                attempt.cancel()

    def close(self) -> None:
        for name in list(self.slots):
            self._drop(name)
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        self._offload.close()

    # -- timing --------------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        times = [self._clock()] if self._notify_mode is not None else []
        for slot in self.slots.values():
            if slot.config.kind == "heartbeat":
                if slot.tracker.state != FAILED:
                    times.append(slot.tracker.beat_deadline())
                continue
            if slot.attempt is not None:
                times.append(slot.attempt.deadline)
            else:
                times.append(slot.next_start)
            for attempt in (slot.attempt, slot.lingering):
                poll = attempt.next_deadline() if attempt is not None else None
                if poll is not None:
                    times.append(poll)
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        if self._notify_mode is not None:
            self._start_notify()
        for name, slot in list(self.slots.items()):
            if self.slots.get(name) is not slot:  # dropped by a reload meanwhile
                continue
            if slot.config.kind == "heartbeat":
                self._emit(slot.tracker.check_beat(now))
                continue
            for attempt in (slot.attempt, slot.lingering):
                if attempt is not None:
                    attempt.on_timer(now)
            if slot.lingering is not None and not slot.lingering.lingering:
                slot.lingering = None
            if slot.attempt is not None and now >= slot.attempt.deadline:
                slot.attempt.expire(now)
            if slot.attempt is None and now >= slot.next_start:
                self._start(slot, now)

    def _start(self, slot: Slot, now: float) -> None:
        period = slot.config.period
        slot.next_start += period
        if slot.next_start <= now:  # the loop was late (a suspended VM): no burst to catch up
            slot.next_start = now + period
        if slot.lingering is not None:
            self._emit(slot.tracker.result(False, slot.lingering.linger_reason(), now))
            return
        cls = ATTEMPTS[slot.config.kind]

        def finish(ok: bool, seen: str) -> None:
            self._finished(slot, attempt, ok, seen)

        attempt = cls(slot.config, self._reactor, self._clock, self._offload, finish)
        slot.attempt = attempt
        attempt.start()

    def _finished(self, slot: Slot, attempt: Attempt, ok: bool, seen: str) -> None:
        if slot.attempt is attempt:
            slot.attempt = None
        if attempt.lingering:
            slot.lingering = attempt
        now = self._clock()
        if isinstance(attempt, FileAttempt) and attempt.age is not None and ok:
            # Look again the moment the stamp would be too old, if that comes first.
            stale_in = slot.config.max_age - attempt.age
            slot.next_start = min(slot.next_start, now + max(stale_in, 0.0) + 0.001)
        self._emit(slot.tracker.result(ok, seen, now))

    # -- heartbeats ----------------------------------------------------------

    def _on_datagram(self, creds: tuple[int, int, int], fields: Mapping[str, str]) -> None:
        pid, uid, _gid = creds
        name = fields.get("IIM_HEARTBEAT")
        beats = [s for s in self.slots.values() if s.config.kind == "heartbeat"]
        if name is not None:
            targets = [s for s in beats if s.config.target == name]
        else:
            targets = [s for s in beats if s.uid is not None and s.uid == uid]
        privileged = uid in (0, os.geteuid())
        allowed = [s for s in targets if privileged or (s.uid is not None and s.uid == uid)]
        if not allowed:
            why = "no heartbeat check is named so" if not targets else "permission denied"
            self._refuse(pid, uid, name, why)
            return
        now = self._clock()
        watchdog = fields.get("WATCHDOG")
        for slot in allowed:
            if "STATUS" in fields:
                slot.tracker.app_set_status(fields["STATUS"])
            if watchdog == "trigger":
                self._emit(slot.tracker.fail_now("the application reported a failure "
                                                 "(WATCHDOG=trigger)", now))
            elif watchdog == "1" or fields.get("READY") == "1":
                self._emit(slot.tracker.beat(now))

    def _refuse(self, pid: int, uid: int, name: Optional[str], why: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= REFUSED_LOG_INTERVAL:
            self._refused_logged = now
            LOG.warning(
                "heartbeat from pid %s (uid %s) for %s refused: %s (%d refused so far; "
                "logged at most once a minute)", pid, uid,
                repr(name[:64]) if name is not None else "its uid", why, self.refused,
            )

    def _emit(self, transition: Optional[Transition]) -> None:
        if transition is not None:
            self._on_transition(transition)
