"""Helpers for the detector tests: messages of both agent generations, output filters.

Time is just numbers: nothing here sleeps.  ``hello01``/``hb01`` are what a
0.1.0 agent sends (no start id, no interval/boot id/pause level in
heartbeats); ``hello02``/``hb02`` what a 0.2 agent sends (the whole state).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from host_relay.detector import (
    Detector,
    DetectorConfig,
    Ignored,
    Notify,
    PauseChanged,
    Persist,
    State,
    Suppressed,
    Transitioned,
)
from iim_protocol.messages import Heartbeat, Hello, PauseState

# The examples use 3 missed heartbeats (the default is 10): interval 1 s unless
# said, hang after 3 s, min_uptime 10 s, cooldown 300 s.
CFG = DetectorConfig(missed_heartbeats=3)
_ABSENT: Any = object()


def before(t: float) -> float:
    return math.nextafter(t, -math.inf)


def hello01(interval: float = 1.0, boot: str = "boot-1") -> Hello:
    return Hello(1, "0.1.0", boot, interval, ("sshd",))


def hb01(seq: int = 0, **checks: str) -> Heartbeat:
    return Heartbeat(seq, tuple(checks.items()))


def pause(remaining: float, reason: str = "maintenance") -> PauseState:
    return PauseState(remaining, reason)


def hello02(interval: float = 1.0, boot: str = "boot-1", start: str = "start-1",
            paused: Any = None) -> Hello:
    """A 0.2 hello: ``paused`` is a PauseState, None (not paused) or _ABSENT."""
    kw = {} if paused is _ABSENT else {"pause": paused, "pause_known": True}
    return Hello(1, "0.2.0", boot, interval, ("sshd",), start_id=start, **kw)


def hb02(seq: int = 0, paused: Any = None, interval: float = 1.0, boot: str = "boot-1",
         start: str = "start-1", **checks: str) -> Heartbeat:
    return Heartbeat(seq, tuple(checks.items()), interval=interval, boot_id=boot,
                     start_id=start, pause=paused, pause_known=True)


def of(out: list, cls: type) -> list:
    return [o for o in out if isinstance(o, cls)]


def notifies(out: list) -> list[Notify]:
    return of(out, Notify)


def persists(out: list) -> list[Persist]:
    return of(out, Persist)


def ignored(out: list, reason: str | None = None) -> list[Ignored]:
    return [o for o in of(out, Ignored) if reason is None or o.reason == reason]


def suppressed(out: list, why: str | None = None) -> list[Suppressed]:
    return [o for o in of(out, Suppressed) if why is None or o.why == why]


def moves(out: list) -> list[tuple[State, State]]:
    return [(o.old, o.new) for o in of(out, Transitioned)]


def pause_changes(out: list) -> list[PauseChanged]:
    return of(out, PauseChanged)


def connected(cfg: DetectorConfig = CFG, now: float = 0.0, **kw: Any) -> Detector:
    d = Detector(cfg, now, **kw)
    d.channel_connected(now)
    return d


def armed(cfg: DetectorConfig = CFG, now: float = 0.0, interval: float = 1.0,
          **kw: Any) -> Detector:
    """Connected and armed by a 0.1.0 hello at ``now``."""
    d = connected(cfg, now, **kw)
    d.message(hello01(interval), now)
    assert d.state is State.ARMED
    return d


def beat(d: Detector, start: float, end: float, step: float = 1.0, make=hb01,
         **checks: str) -> list:
    """Heartbeats at start, start+step, ... up to end; returns all outputs."""
    out, t, seq = [], start, 0
    while t <= end + 1e-9:
        out += d.message(make(seq, **checks), t)
        t += step
        seq += 1
    return out


def assert_deadline_is_exact(d: Detector) -> float:
    """tick just before next_deadline changes nothing; tick at it changes the state."""
    deadline = d.next_deadline()
    assert deadline is not None
    early = copy.deepcopy(d)
    out = early.tick(before(deadline))
    assert early.state is d.state and not notifies(out)
    assert early.next_deadline() == deadline
    on_time = copy.deepcopy(d)
    out = on_time.tick(deadline)
    # A timer (a new state, or - one of two pauses ending - a later deadline), or a
    # held-back write.
    assert (on_time.state is not d.state or persists(out)
            or on_time.next_deadline() != deadline)
    return deadline


def restart(d: Detector, now: float, cfg: DetectorConfig = CFG, **kw: Any) -> Detector:
    """What a relay restart does: a new detector from the stored record, channel reconnected.

    The record goes through JSON and a clock change, as the store does it."""
    wall_minus_mono = 1_700_000_000.0
    stored = d.record().shifted(wall_minus_mono).to_json()
    from host_relay.detector import DetectorRecord

    restored = DetectorRecord.from_json(stored).shifted(-wall_minus_mono)
    new = Detector(cfg, now, restored=restored, **kw)
    new.channel_connected(now)
    return new
