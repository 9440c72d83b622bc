"""Random input sequences, both agent generations and relay restarts mixed in.

Never raises; never notifies twice for one incident, nor while the guest's
or the operator's pause (as the detector announced each) holds, nor inside the cooldown, nor
beyond the storm cap, nor while the domain is not running; a hang only with
the channel up; a periodic hello never ends an incident.
IIM_HYPOTHESIS_EXAMPLES=20000 for a longer hunt.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_relay.detector import (
    Detector,
    DetectorConfig,
    DetectorRecord,
    DomainState,
    IncidentClosed,
    Notify,
    PauseChanged,
    State,
)
from iim_protocol.messages import Failure, Goodbye, Heartbeat, Hello, Pause, Recovered, Resume
from tests.host_relay.detector_testing import (
    _ABSENT,
    assert_deadline_is_exact,
    hb01,
    hb02,
    hello01,
    hello02,
    pause,
    persists,
)

HCFG = DetectorConfig(missed_heartbeats=3, min_interval=0.5, max_interval=2.0, min_uptime=2.0,
                      max_pause=20.0, cooldown=5.0, max_notifications=2,
                      notification_window=300.0, late_tolerance=2.0)
RUNS = {DomainState.RUNNING, DomainState.UNKNOWN}

BOOT = st.sampled_from(["b1", "b1", "b1", "b2"])
START = st.sampled_from(["s1", "s1", "s1", "s2"])
LEVEL = st.sampled_from([_ABSENT, None, None, 0.0, 3.0, 10.0, 100.0])
CHECKS = st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["ok", "failed",
                                                                      "starting"]))
INTERVAL = st.sampled_from([0.1, 0.5, 1.0, 2.0, 60.0])


def _level(x):
    return x if x is _ABSENT or x is None else pause(x)


HELLO01 = st.builds(lambda i, b: ("msg", hello01(i, b)), INTERVAL, BOOT)
HELLO02 = st.builds(lambda i, b, s, p: ("msg", hello02(i, b, s, _level(p))),
                    INTERVAL, BOOT, START, LEVEL)
HB01 = st.builds(lambda c: ("msg", hb01(0, **c)), CHECKS)
HB02 = st.builds(lambda c, b, s, p: ("msg", hb02(0, paused=_level(None if p is _ABSENT else p),
                                                 boot=b, start=s, **c)),
                 CHECKS, BOOT, START, LEVEL)
OTHER = st.one_of(
    st.builds(lambda c: ("msg", Failure(1, c, "down")), st.sampled_from(["a", "b"])),
    st.builds(lambda c: ("msg", Recovered(1, c)), st.sampled_from(["a", "b"])),
    st.just(("msg", Goodbye())),
    st.builds(lambda t: ("msg", Pause(t, "maintenance")), st.sampled_from([0.0, 1.0, 5.0, 100.0])),
    st.just(("msg", Resume())),
    st.just(("connect", None)), st.just(("close", None)),
    st.builds(lambda s: ("domain", s), st.sampled_from(list(DomainState))),
    st.sampled_from([("restart", "sigterm"), ("restart", "kill-9")]),
    st.builds(lambda t: ("host_pause", t), st.sampled_from([1.0, 5.0, 15.0, 100.0])),
    st.just(("host_resume", None)),
)
TICKS = st.sampled_from([("tick", None), ("tick_deadline", None)])
op = st.one_of(HELLO01, HELLO02, HB01, HB02, HB02, HB02, TICKS, TICKS, OTHER)
DTS = [0.0, 0.25, 0.5, 1.0, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0]
step = st.tuples(st.sampled_from(DTS), op)

EXAMPLES = int(os.environ.get("IIM_HYPOTHESIS_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=20, max_size=80))
def test_random_sequences_keep_the_promises(steps):
    now = 0.0
    d = Detector(HCFG, now)
    stored = DetectorRecord()  # what a kill -9 would leave: the last Persist
    domain, channel = DomainState.RUNNING, False
    pause_end = None  # as the detector announced it
    host_pause_end = None  # the operator's, likewise
    identity = ("", "")  # last (boot id, start id) a hello or 0.2 heartbeat named
    sent: list[float] = []
    open_since_notify = False  # a notification whose incident has not been closed
    for dt, (kind, arg) in steps:
        now += dt
        if kind == "tick_deadline":
            if d.next_deadline() is None:
                continue
            assert_deadline_is_exact(d)
            now = d.next_deadline()
        if kind == "restart":
            rec = d.record() if arg == "sigterm" else stored
            rec = DetectorRecord.from_json(rec.to_json())
            d = Detector(HCFG, now, domain=domain, restored=rec)
            stored = rec
            channel = False
            # A start held back (a second change inside WRITE_EVERY) and lost by a
            # kill -9 is a start again: the relay knows only what was stored.
            identity = (rec.boot_id, rec.start_id)
            st_ = d.status(now)
            pause_end = None if st_.pause is None else now + st_.pause.remaining
            host_pause_end = None if st_.host_pause is None else now + st_.host_pause.remaining
            continue
        out = _apply(d, kind, arg, now)
        for o in out:
            if isinstance(o, PauseChanged) and o.origin == "host":
                host_pause_end = o.until
            elif isinstance(o, PauseChanged):
                pause_end = o.until
            elif isinstance(o, IncidentClosed):
                open_since_notify = False
                msg = arg if kind == "msg" else None
                if o.kind == "process_failure":
                    assert isinstance(msg, (Hello, Heartbeat, Recovered)), (kind, msg)
                    if isinstance(msg, Hello):
                        assert (msg.boot_id, msg.start_id) != identity, "periodic hello closed"
            elif isinstance(o, Notify):
                assert not open_since_notify, "notified twice for one incident"
                open_since_notify = True
                assert o.at <= now
                assert domain in RUNS, "notified while the domain is not running"
                assert pause_end is None or o.at >= pause_end, "notified during a pause"
                assert host_pause_end is None or o.at >= host_pause_end, \
                    "notified during the host's pause"
                if o.kind == "guest_hang":
                    assert channel, "hang notified while the channel is closed"
                if sent:
                    assert o.at - sent[-1] >= HCFG.cooldown, "notified during the cooldown"
                sent.append(o.at)
                window = [t for t in sent if t > o.at - HCFG.notification_window]
                assert len(window) <= HCFG.max_notifications
        if persists(out):
            stored = persists(out)[-1].record
        if kind == "msg" and isinstance(arg, (Hello, Heartbeat)) and arg.boot_id:
            identity = (arg.boot_id, arg.start_id)
        if kind == "domain":
            domain = arg
        if kind == "connect" or kind == "msg":
            channel = True
        elif kind == "close":
            channel = False
        nd = d.next_deadline()
        assert nd is None or nd > now
        assert isinstance(d.state, State)
        d.status(now)
        assert DetectorRecord.from_json(d.record().to_json()) == d.record()


def _apply(d: Detector, kind, arg, now):
    if kind == "msg":
        return d.message(arg, now)
    if kind == "connect":
        return d.channel_connected(now)
    if kind == "close":
        return d.channel_closed(now)
    if kind == "domain":
        return d.domain_state(arg, now)
    if kind == "host_pause":
        return d.host_pause(arg, "operator", now)
    if kind == "host_resume":
        return d.host_resume(now)
    return d.tick(now)
