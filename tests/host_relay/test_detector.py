"""Tests of host_relay.detector: today's behaviour that still holds, with 0.1.0 agents.

Time is just numbers, nothing sleeps.  The 0.2 level rules are in
test_detector_levels.py, restarts in test_detector_restore.py.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest

from host_relay.detector import (
    MAX_REASON_CHARS,
    Detector,
    DetectorConfig,
    DomainState,
    IncidentClosed,
    LateDeadline,
    Notify,
    Started,
    State,
)
from host_relay.detector_inputs import Input
from host_relay.detector_rules import Facts
from host_relay.detector_table import TABLE
from iim_protocol.messages import Failure, Goodbye, Recovered
from tests.host_relay.detector_testing import (
    CFG,
    armed,
    assert_deadline_is_exact,
    beat,
    before,
    connected,
    ignored,
    moves,
    notifies,
    of,
    suppressed,
)
from tests.host_relay.detector_testing import hb01 as hb
from tests.host_relay.detector_testing import hello01 as hello

# ---------------------------------------------------------------- config


def test_default_config_is_valid_and_the_brief_values():
    assert DetectorConfig() == dataclasses.replace(CFG, missed_heartbeats=10)
    assert (CFG.missed_heartbeats, CFG.min_interval, CFG.max_interval) == (3, 0.5, 10.0)
    assert (CFG.min_uptime, CFG.max_pause, CFG.cooldown) == (10.0, 3600.0, 300.0)
    assert (CFG.max_notifications, CFG.notification_window) == (3, 3600.0)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("missed_heartbeats", 0, "every guest hung"),
        ("missed_heartbeats", 1, "one late heartbeat"),  # [detector] missed_heartbeats min=2
        ("missed_heartbeats", True, "integer"),
        ("min_interval", 0.0, "10 Hz"),
        ("max_interval", 0.4, "min_interval"),
        ("cooldown", float("nan"), "day"),
        ("max_notifications", 0, "disable"),
        ("notification_window", 0.0, "positive"),
        ("late_tolerance", -0.1, "negative"),
        ("min_uptime", "10", "number"),
    ],
)
def test_config_rejects_each_limit_with_its_reason(field, value, words):
    with pytest.raises(ValueError, match=words):
        DetectorConfig(**{field: value})


def test_now_must_be_finite():
    with pytest.raises(ValueError):
        Detector(CFG, float("nan"))
    d = connected()
    with pytest.raises(ValueError):
        d.tick(float("inf"))


# ---------------------------------------------------------------- table


def test_table_rows_are_functions_and_states_not_names():
    for (state, inp), (handler, to) in TABLE.items():
        assert handler is None or callable(handler), (state, inp)
        assert to is None or isinstance(to, State) or callable(to), (state, inp)
        assert not isinstance(handler, str) and not isinstance(to, str)


def test_guards_return_states():
    f = Facts(config=CFG, now=0.0, domain=DomainState.RUNNING)
    for (_, _), (_, to) in TABLE.items():
        if to is not None and not isinstance(to, State):
            assert isinstance(to(f, 0.0), State)


def test_channel_domain_and_start_inputs_have_a_row_in_every_state():
    for state in State:
        for inp in (Input.CONNECTED, Input.CLOSED, Input.DOMAIN_UP, Input.DOMAIN_HOLD,
                    Input.DOMAIN_STOP, Input.START, Input.HELLO):
            assert (state, inp) in TABLE, (state, inp)


def test_no_getattr_lookup_of_handlers_in_the_detector():
    import inspect

    from host_relay import detector, detector_inputs, detector_rules, detector_table

    for mod in (detector, detector_inputs, detector_rules, detector_table):
        src = inspect.getsource(mod)
        assert "getattr(" not in src and '"_on_' not in src, mod.__name__


# ---------------------------------------------------------------- arming


def test_heartbeats_of_an_0_1_0_agent_before_hello_are_ignored_and_counted():
    d = connected()
    out = beat(d, 1, 100)
    assert d.state is State.UNKNOWN and d.next_deadline() is None
    assert len(ignored(out, "before_hello")) == 100
    assert d.counters.ignored["heartbeat:before_hello"] == 100
    assert not notifies(d.tick(10_000))


def test_hello_arms_with_its_interval():
    d = connected()
    out = d.message(hello(2.0), 0)
    assert d.state is State.ARMED
    [s] = of(out, Started)
    assert (s.interval, s.start, s.boot_id) == (2.0, True, "boot-1")
    beat(d, 2, 20, 2.0)
    assert d.next_deadline() == 24.0  # the last interval, then SUSPECT
    d.tick(24)
    assert d.state is State.SUSPECT
    assert d.next_deadline() == 26.0


@pytest.mark.parametrize(
    "asked, used",
    [(0.1, 0.5), (0.49, 0.5), (0.5, 0.5), (10.0, 10.0), (10.01, 10.0), (60.0, 10.0)],
)
def test_hello_interval_is_clamped(asked, used):
    d = connected()
    out = d.message(hello(asked), 0)
    [s] = of(out, Started)
    assert (s.interval, s.asked_interval) == (used, asked)
    assert d.status(0).interval == used
    assert d.counters.clamped["interval"] == (asked != used)
    d.message(hb(), 100)
    assert d.next_deadline() == 100 + 2 * used
    d.tick(100 + 2 * used)
    assert not notifies(d.tick(before(100 + 3 * used)))
    assert notifies(d.tick(100 + 3 * used))[0].at == 100 + 3 * used


# ---------------------------------------------------------------- hang


def test_hang_exactly_at_missed_times_interval_not_before():
    d = armed()
    beat(d, 1, 20)
    out = d.tick(before(22.0))
    assert d.state is State.ARMED and not out
    out = d.tick(22.0)
    assert moves(out) == [(State.ARMED, State.SUSPECT)] and not notifies(out)
    assert d.next_deadline() == 23.0
    assert not notifies(d.tick(before(23.0)))
    out = d.tick(23.0)
    [n] = notifies(out)
    assert n == Notify("guest_hang", None, n.reason, 23.0)
    assert "no heartbeat for 3.0s" in n.reason
    assert d.state is State.COOLDOWN
    assert d.counters.notified["guest_hang"] == 1


def test_heartbeat_in_suspect_goes_back_to_armed_without_notifying():
    d = armed()
    beat(d, 1, 20)
    d.tick(22.5)
    assert d.state is State.SUSPECT
    out = d.message(hb(99), 22.9)
    assert d.state is State.ARMED and not notifies(out)
    assert d.next_deadline() == pytest.approx(24.9)


def test_min_uptime_holds_hang_detection_after_hello():
    d = armed()
    assert d.status(5).hang_detection.startswith("held (min_uptime")
    assert d.next_deadline() == 10.0
    assert not notifies(d.tick(before(10.0)))
    [n] = notifies(d.tick(10.0))
    assert n.at == 10.0 and "no heartbeat for 10.0s" in n.reason


def test_min_uptime_then_normal_deadline():
    d = armed()
    beat(d, 1, 8)
    assert d.next_deadline() == 10.0
    d.tick(10.0)
    assert d.state is State.SUSPECT
    assert not notifies(d.tick(before(11.0)))
    assert notifies(d.tick(11.0))


def test_hang_deadline_when_the_relay_was_late_is_rechecked_once():
    d = armed()
    beat(d, 1, 20)
    out = d.tick(30.0)  # the deadline was 23: the relay stalled for 7 s
    assert not notifies(out)
    [late] = of(out, LateDeadline)
    assert (late.late, late.recheck_at, late.at) == (7.0, 31.0, 23.0)
    assert d.counters.late_deadlines == 1
    assert d.next_deadline() == 31.0
    saved = copy.deepcopy(d)  # a heartbeat that sat in the socket saves the guest
    assert not notifies(saved.message(hb(), 30.1))
    assert saved.state is State.ARMED
    [n] = notifies(d.tick(31.0))
    assert n.at == 31.0


def test_tick_slightly_late_still_notifies():
    d = armed()
    beat(d, 1, 20)
    [n] = notifies(d.tick(25.0))  # 2 s late = late_tolerance: not a stall
    assert n.at == 23.0


def test_input_after_a_missed_deadline_runs_the_timer_first():
    d = armed(DetectorConfig(missed_heartbeats=3, late_tolerance=100))
    beat(d, 1, 20)
    out = d.message(hb(), 30)
    assert [n.at for n in notifies(out)] == [23.0]


# ---------------------------------------------------------------- failure frames


def test_failure_notifies_at_once_even_during_min_uptime():
    d = armed()
    out = d.message(Failure(7, "sshd", "process exited with status 1"), 2.5)
    [n] = notifies(out)
    assert n == Notify("process_failure", "sshd",
                       "check sshd failed: process exited with status 1", 2.5)
    assert d.state is State.COOLDOWN
    st = d.status(3)
    assert st.checks == (("sshd", "failed"),) and st.incident.kind == "process_failure"


def test_failure_reason_is_bounded_and_sanitised():
    d = armed()
    [n] = notifies(d.message(Failure(1, "c" * 64, "r" * 256), 1))
    assert len(n.reason) <= MAX_REASON_CHARS and n.reason.endswith("...")
    d = armed()
    hostile = Failure(1, "sshd", "x")
    object.__setattr__(hostile, "reason", "line\nFAKE LOG\x1b[31m")
    [n] = notifies(d.message(hostile, 1))
    assert n.reason.isprintable() and "\n" not in n.reason


def test_recovered_updates_checks():
    d = armed()
    d.message(hb(1, sshd="ok", nginx="failed"), 1)  # 0.1.0 heartbeat: its level counts too
    d.message(Recovered(2, "nginx"), 2)
    assert d.status(2).checks == (("nginx", "ok"), ("sshd", "ok"))


def test_failure_while_domain_migrating_is_dropped_and_said():
    d = armed()
    d.domain_state(DomainState.MIGRATING, 1)
    out = d.message(Failure(1, "sshd", "gone"), 2)
    assert not notifies(out)
    [s] = suppressed(out, "domain_migrating")
    assert s.check == "sshd"
    assert d.state is State.ARMED


# ---------------------------------------------------------------- cooldown / FAILED


def test_failure_during_cooldown_is_suppressed_and_counted():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    out = d.message(Failure(2, "nginx", "gone too"), 6)
    assert not notifies(out)
    assert [s.check for s in suppressed(out, "cooldown")] == ["nginx"]
    assert d.counters.suppressed["cooldown"] == 1
    assert assert_deadline_is_exact(d) == 305.0
    d.tick(305)
    assert d.state is State.FAILED  # no start, no recovery: not over
    assert not notifies(d.message(Failure(3, "sshd", "still"), 400))
    assert not notifies(d.tick(100_000))
    d.message(hello(boot="boot-2"), 100_001)  # Masakari restarted it: a new boot
    assert d.state is State.ARMED


def test_new_boot_during_cooldown_rearms_when_it_ends_with_a_fresh_timer():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    out = d.message(hello(boot="boot-2"), 60)  # Masakari restarted the instance
    assert of(out, IncidentClosed)[0].why == "the agent started again"
    assert d.state is State.COOLDOWN
    out = d.tick(305)
    assert d.state is State.ARMED and not notifies(out)
    assert d.status(305).boot_id == "boot-2"
    d.tick(307)
    assert not notifies(d.tick(before(308)))
    assert notifies(d.tick(308))


def test_heartbeats_through_cooldown_then_monitoring_resumes():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(hello(boot="boot-2"), 60)
    beat(d, 61, 320)
    assert d.state is State.ARMED
    assert not notifies(d.tick(before(323)))
    assert notifies(d.tick(323))


def test_recovered_check_ends_a_process_failure_incident():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(Recovered(2, "nginx"), 6)  # another check: not this incident
    d.tick(305)
    assert d.state is State.FAILED
    out = d.message(Recovered(3, "sshd"), 306)
    assert d.state is State.ARMED and of(out, IncidentClosed)
    assert d.status(306).incident is None


def test_recovery_during_cooldown_rearms_when_it_ends():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(Recovered(2, "sshd"), 6)
    d.tick(305)
    assert d.state is State.ARMED


def test_heartbeat_after_a_hang_ends_the_incident():
    d = armed()
    assert notifies(d.tick(10))
    d.tick(310)
    assert d.state is State.FAILED
    d.message(hb(), 400)
    assert d.state is State.ARMED
    assert assert_deadline_is_exact(d) == 402
    d.tick(402)
    assert notifies(d.tick(403))


def test_no_repeated_notification_for_the_same_incident():
    d = armed()
    assert len(notifies(d.tick(10))) == 1
    assert not notifies(d.tick(1_000_000))
    assert d.state is State.FAILED


def test_goodbye_during_cooldown():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(Goodbye("shutdown"), 10)  # Masakari shuts the guest down to restart it
    d.tick(305)
    assert d.state is State.DEPARTED  # waits for the agent, as after any goodbye
    assert d.status(305).incident is not None
    assert ignored(d.message(hb(), 306), "in_departed")
    assert not notifies(d.message(Failure(1, "sshd", "gone"), 307))
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(hello(), 60)
    d.message(Goodbye("stop"), 100)
    d.tick(305)
    assert d.state is State.DEPARTED
    assert not notifies(d.tick(10_000))


def test_zero_cooldown():
    d = armed(DetectorConfig(missed_heartbeats=3, cooldown=0))
    d.message(Failure(1, "sshd", "gone"), 5)
    assert d.state is State.FAILED
    assert d.next_deadline() is None


# ---------------------------------------------------------------- storm cap


def test_storm_cap_over_a_sliding_window():
    cfg = DetectorConfig(missed_heartbeats=3, cooldown=10, max_notifications=3,
                         notification_window=100, min_uptime=1000)
    d = armed(cfg)
    sent = []
    for i, t in enumerate((1, 20, 40)):
        sent += notifies(d.message(Failure(1, "sshd", "gone"), t))
        d.message(hello(boot=f"boot-{i + 2}"), t + 11)
    assert [n.at for n in sent] == [1, 20, 40]
    out = d.message(Failure(1, "sshd", "gone"), 60)
    assert not notifies(out) and suppressed(out, "storm_cap")
    assert d.state is State.FAILED
    st = d.status(60)
    assert st.notifications_in_window == 3 and st.incident.notified is False
    d.message(hello(boot="boot-9"), 70)
    assert not notifies(d.message(Failure(1, "sshd", "gone"), before(101)))  # 1 still inside
    assert d.counters.suppressed["storm_cap"] == 2
    d.message(hello(boot="boot-10"), before(101))
    [n] = notifies(d.message(Failure(1, "sshd", "gone"), 101))  # (1, 101]: 20 and 40 only
    assert n.at == 101


def test_storm_cap_also_holds_for_hangs():
    cfg = DetectorConfig(missed_heartbeats=3, cooldown=0, max_notifications=1,
                         notification_window=1000, min_uptime=0)
    d = armed(cfg)
    assert notifies(d.tick(3))
    d.message(hello(), 50)
    out = d.tick(53)
    assert not notifies(out) and d.state is State.FAILED
    assert d.next_deadline() is None  # a capped hang does not retry every tick
    assert not notifies(d.tick(500))
