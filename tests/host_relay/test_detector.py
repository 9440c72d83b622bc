"""Tests of host_relay.detector: time is just numbers, nothing sleeps."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_relay.detector import (
    MAX_REASON_CHARS,
    Detector,
    DetectorConfig,
    DomainState,
    Log,
    Metric,
    Notify,
    State,
)
from host_relay.detector_table import TABLE, Input
from iim_protocol.messages import (
    Failure,
    Goodbye,
    Heartbeat,
    Hello,
    Pause,
    Recovered,
    Resume,
)

UUID = "6f1e5c2a-0000-4000-8000-000000000001"
# The examples below use 3 missed heartbeats (the default is 10): interval 1 s unless
# said, hang after 3 s, min_uptime 10 s.
CFG = DetectorConfig(missed_heartbeats=3)


def before(t: float) -> float:
    return math.nextafter(t, -math.inf)


def hello(interval: float = 1.0, boot: str = "boot-1") -> Hello:
    return Hello(1, "1.0", boot, interval, ("sshd",))


def hb(seq: int = 0, **checks: str) -> Heartbeat:
    return Heartbeat(seq, tuple(checks.items()))


def notifies(out):
    return [o for o in out if isinstance(o, Notify)]


def metrics(out, name):
    return [o for o in out if isinstance(o, Metric) and o.name == name]


def logs(out, level=None):
    return [o for o in out if isinstance(o, Log) and (level is None or o.level == level)]


def text(log: Log) -> str:
    return log.message % log.args


def connected(cfg: DetectorConfig = CFG, now: float = 0.0, **kw) -> Detector:
    d = Detector(UUID, cfg, now, **kw)
    d.channel_connected(now)
    return d


def armed(cfg: DetectorConfig = CFG, now: float = 0.0, interval: float = 1.0, **kw) -> Detector:
    d = connected(cfg, now, **kw)
    d.message(hello(interval), now)
    assert d.state is State.ARMED
    return d


def beat(d: Detector, start: float, end: float, step: float = 1.0) -> list:
    """Heartbeats at start, start+step, ... up to end; returns all outputs."""
    out, t, seq = [], start, 0
    while t <= end + 1e-9:
        out += d.message(hb(seq), t)
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
    on_time.tick(deadline)
    assert on_time.state is not d.state
    return deadline


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
        ("missed_heartbeats", 101, "useless"),
        ("missed_heartbeats", True, "integer"),
        ("missed_heartbeats", 2.0, "integer"),
        ("min_interval", 0.0, "10 Hz"),
        ("max_interval", 0.4, "min_interval"),
        ("max_interval", 61.0, "minute"),
        ("min_uptime", -1.0, "hour"),
        ("max_pause", 8 * 24 * 3600.0, "week"),
        ("cooldown", float("nan"), "day"),
        ("cooldown", -1.0, "day"),
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
        Detector(UUID, CFG, float("nan"))
    d = connected()
    with pytest.raises(ValueError):
        d.tick(float("inf"))


# ---------------------------------------------------------------- table


def test_every_table_handler_exists():
    for handler in TABLE.values():
        if not isinstance(handler, State):
            assert callable(getattr(Detector, "_on_" + handler)), handler


def test_channel_and_domain_inputs_have_a_row_in_every_state():
    for state in State:
        for inp in (Input.CONNECTED, Input.CLOSED, Input.DOMAIN_UP, Input.DOMAIN_HOLD,
                    Input.DOMAIN_STOP, Input.HELLO):
            assert (state, inp) in TABLE, (state, inp)


# ---------------------------------------------------------------- arming


def test_heartbeats_before_hello_are_ignored_and_counted():
    d = connected()
    out = beat(d, 1, 100)
    assert d.state is State.UNKNOWN
    assert d.next_deadline() is None
    ignored = metrics(out, "iim_detector_ignored_total")
    assert len(ignored) == 100
    assert ignored[0].labels == (("input", "heartbeat"), ("reason", "before_hello"))
    assert not logs(out, logging.WARNING) and not logs(out, logging.ERROR)
    assert not notifies(d.tick(10_000))


def test_failure_before_hello_is_ignored():
    d = connected()
    out = d.message(Failure(1, "sshd", "gone"), 5)
    assert not notifies(out)
    assert metrics(out, "iim_detector_ignored_total")
    assert d.state is State.UNKNOWN


def test_hello_arms_with_its_interval():
    d = connected()
    out = d.message(hello(2.0), 0)
    assert d.state is State.ARMED
    assert "heartbeat every 2s" in text(logs(out, logging.INFO)[0])
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
    assert d.snapshot(0)["heartbeat_interval"] == used
    clamped = asked != used
    assert bool(metrics(out, "iim_detector_interval_clamped_total")) == clamped
    assert bool(logs(out, logging.WARNING)) == clamped
    d.message(hb(), 100)
    assert d.next_deadline() == 100 + 2 * used
    d.tick(100 + 2 * used)
    out = d.tick(before(100 + 3 * used))
    assert not notifies(out)
    out = d.tick(100 + 3 * used)
    assert notifies(out)[0].at == 100 + 3 * used


# ---------------------------------------------------------------- hang


def test_hang_exactly_at_missed_times_interval_not_before():
    d = armed()
    beat(d, 1, 20)
    out = d.tick(before(22.0))
    assert d.state is State.ARMED and not out
    out = d.tick(22.0)
    assert d.state is State.SUSPECT and not notifies(out)  # SUSPECT never notifies
    assert "one more missed interval" in text(logs(out, logging.INFO)[0])
    assert d.next_deadline() == 23.0
    out = d.tick(before(23.0))
    assert not notifies(out)
    out = d.tick(23.0)
    [n] = notifies(out)
    assert n == Notify("guest_hang", UUID, n.reason, 23.0)
    assert "no heartbeat for 3.0s" in n.reason
    assert d.state is State.COOLDOWN
    assert any("notifying Masakari" in text(lg) for lg in logs(out, logging.WARNING))


def test_heartbeat_in_suspect_goes_back_to_armed_without_notifying():
    d = armed()
    beat(d, 1, 20)
    d.tick(22.5)
    assert d.state is State.SUSPECT
    out = d.message(hb(99), 22.9)
    assert d.state is State.ARMED and not notifies(out)
    assert "heartbeats resumed after 2.9s" in text(logs(out, logging.INFO)[0])
    assert d.next_deadline() == pytest.approx(24.9)


def test_min_uptime_holds_hang_detection_after_hello():
    d = armed()
    assert d.snapshot(5)["hang_detection"].startswith("held (min_uptime")
    assert d.next_deadline() == 10.0  # silent since hello, but no hang before min_uptime
    assert not notifies(d.tick(before(10.0)))
    [n] = notifies(d.tick(10.0))
    assert n.at == 10.0 and "no heartbeat for 10.0s" in n.reason


def test_min_uptime_then_normal_deadline():
    d = armed()
    beat(d, 1, 8)
    # silent since 8: the last interval would start at 10 anyway, hang at 11
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
    assert metrics(out, "iim_detector_late_deadline_total")
    assert "relay was busy" in text(logs(out, logging.WARNING)[0])
    assert d.next_deadline() == 31.0
    # a heartbeat that sat in the socket during the stall saves the guest
    saved = copy.deepcopy(d)
    assert not notifies(saved.message(hb(), 30.1))
    assert saved.state is State.ARMED
    # still silent at the re-check: notify
    [n] = notifies(d.tick(31.0))
    assert n.at == 31.0


def test_tick_slightly_late_still_notifies():
    d = armed()
    beat(d, 1, 20)
    [n] = notifies(d.tick(25.0))  # 2 s late = late_tolerance: not a stall
    assert n.at == 23.0  # outputs say when it happened


def test_input_after_a_missed_deadline_runs_the_timer_first():
    d = armed(DetectorConfig(missed_heartbeats=3, late_tolerance=100))
    beat(d, 1, 20)
    out = d.message(hb(), 30)  # too late: the guest was silent from 20 to 30
    assert [n.at for n in notifies(out)] == [23.0]


# ---------------------------------------------------------------- failure frames


def test_failure_notifies_at_once_even_during_min_uptime():
    d = armed()
    out = d.message(Failure(7, "sshd", "process exited with status 1"), 2.5)
    [n] = notifies(out)
    assert n == Notify(
        "process_failure", UUID, "check sshd failed: process exited with status 1", 2.5
    )
    assert d.state is State.COOLDOWN
    assert d.snapshot(3)["checks"] == {"sshd": "failed"}
    assert d.snapshot(3)["last_failure"]["kind"] == "process_failure"


def test_failure_reason_is_bounded_and_sanitised():
    d = armed()
    long = Failure(1, "c" * 64, "r" * 256)
    [n] = notifies(d.message(long, 1))
    assert len(n.reason) <= MAX_REASON_CHARS and n.reason.endswith("...")
    # The message classes refuse control characters; the detector does not rely on it.
    d = armed()
    hostile = Failure(1, "sshd", "x")
    object.__setattr__(hostile, "reason", "line\nFAKE LOG\x1b[31m")
    [n] = notifies(d.message(hostile, 1))
    assert n.reason.isprintable() and "\n" not in n.reason


def test_recovered_is_logged_and_updates_checks():
    d = armed()
    d.message(hb(1, sshd="ok", nginx="failed"), 1)
    out = d.message(Recovered(2, "nginx"), 2)
    assert "recovered" in text(logs(out, logging.INFO)[0])
    snap = d.snapshot(2)
    assert snap["checks"] == {"nginx": "ok", "sshd": "ok"}
    assert snap["checks_summary"] == {"ok": 2, "starting": 0, "failed": 0}
    assert d.state is State.ARMED


def test_failure_while_domain_migrating_is_dropped_with_a_warning():
    d = armed()
    d.domain_state(DomainState.MIGRATING, 1)
    out = d.message(Failure(1, "sshd", "gone"), 2)
    assert not notifies(out)
    assert any("not notifying" in text(lg) for lg in logs(out, logging.WARNING))
    assert d.state is State.ARMED


# ---------------------------------------------------------------- cooldown / FAILED


def test_failure_during_cooldown_is_ignored_and_counted():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    out = d.message(Failure(2, "nginx", "gone too"), 6)
    assert not notifies(out)
    assert metrics(out, "iim_detector_ignored_total")[0].labels == (
        ("input", "failure"), ("reason", "cooldown"))
    assert "Masakari is recovering" in text(logs(out, logging.INFO)[-1])
    assert assert_deadline_is_exact(d) == 305.0
    out = d.tick(305)
    assert d.state is State.FAILED  # no hello, no recovery: not over
    assert logs(out, logging.WARNING)
    assert not notifies(d.message(Failure(3, "sshd", "still"), 400))
    assert not notifies(d.tick(100_000))
    d.message(hello(), 500)
    assert d.state is State.ARMED


def test_hello_during_cooldown_rearms_when_it_ends_with_a_fresh_timer():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(hello(boot="boot-2"), 60)  # Masakari restarted the instance
    assert d.state is State.COOLDOWN
    out = d.tick(305)
    assert d.state is State.ARMED and not notifies(out)
    assert d.snapshot(305)["guest_reported"]["boot_id"] == "boot-2"
    d.tick(307)
    assert not notifies(d.tick(before(308)))
    assert notifies(d.tick(308))


def test_heartbeats_through_cooldown_then_monitoring_resumes():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(hello(), 60)
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
    d.message(Recovered(3, "sshd"), 306)
    assert d.state is State.ARMED
    assert d.snapshot(306)["last_failure"]["open"] is False


def test_recovery_during_cooldown_rearms_when_it_ends():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(Recovered(2, "sshd"), 6)
    d.tick(305)
    assert d.state is State.ARMED


def test_heartbeat_after_a_hang_ends_the_incident():
    d = armed()
    [n] = notifies(d.tick(10))
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
    assert d.state is State.DEPARTED  # waits for the hello, as after any goodbye
    assert d.snapshot(305)["last_failure"]["open"] is True
    assert metrics(d.message(hb(), 306), "iim_detector_ignored_total")
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
    cfg = DetectorConfig(missed_heartbeats=3,
                         cooldown=10, max_notifications=3, notification_window=100,
                         min_uptime=1000)
    d = armed(cfg)
    sent = []
    for t in (1, 20, 40):
        sent += notifies(d.message(Failure(1, "sshd", "gone"), t))
        d.message(hello(), t + 11)
    assert [n.at for n in sent] == [1, 20, 40]
    out = d.message(Failure(1, "sshd", "gone"), 60)
    assert not notifies(out)
    assert d.state is State.FAILED
    warning = text(logs(out, logging.WARNING)[0])
    assert warning.startswith(f"instance {UUID}: restart storm cap hit")
    assert metrics(out, "iim_detector_storm_capped_total")
    snap = d.snapshot(60)
    assert (snap["storm_capped"], snap["notifications_in_window"]) == (1, 3)
    assert snap["last_failure"]["notified"] is False
    d.message(hello(), 70)
    assert not notifies(d.message(Failure(1, "sshd", "gone"), before(101)))  # 1 still inside
    assert d.snapshot(101)["storm_capped"] == 2
    d.message(hello(), before(101))
    [n] = notifies(d.message(Failure(1, "sshd", "gone"), 101))  # (1, 101]: 20 and 40 only
    assert n.at == 101


def test_storm_cap_also_holds_for_hangs():
    cfg = DetectorConfig(missed_heartbeats=3,
                         cooldown=0, max_notifications=1, notification_window=1000,
                         min_uptime=0)
    d = armed(cfg)
    assert notifies(d.tick(3))
    d.message(hello(), 50)
    out = d.tick(53)
    assert not notifies(out) and d.state is State.FAILED
    assert d.next_deadline() is None  # capped hang does not retry every tick
    assert not notifies(d.tick(500))


# ---------------------------------------------------------------- pause


def test_pause_is_clamped_and_suppresses_until_it_expires_then_hang():
    d = armed()
    beat(d, 1, 20)
    out = d.message(Pause(7200.0, "backup"), 20)
    assert d.state is State.PAUSED
    assert metrics(out, "iim_detector_pause_clamped_total")
    assert "clamped to 3600s" in text(logs(out, logging.WARNING)[0])
    assert d.snapshot(20)["paused_until"] == 3620.0
    assert not notifies(d.message(Failure(1, "sshd", "frozen"), 100))
    assert assert_deadline_is_exact(d) == 3620.0
    assert not notifies(d.tick(3620.0))
    assert d.state is State.ARMED  # fresh timer from the pause's end
    d.tick(3622)
    assert not notifies(d.tick(before(3623)))
    [n] = notifies(d.tick(3623))
    assert n.at == 3623


def test_pause_expiry_seen_late_uses_the_pause_end():
    d = armed(DetectorConfig(missed_heartbeats=3, late_tolerance=100))
    beat(d, 1, 20)
    d.message(Pause(50, "fsfreeze"), 20)
    [n] = notifies(d.tick(80))
    assert n.at == 73


def test_resume_ends_a_pause_early():
    d = armed()
    beat(d, 1, 20)
    d.message(Pause(100, "backup"), 20)
    out = d.message(Resume(), 50)
    assert d.state is State.ARMED and "resumed" in text(logs(out, logging.INFO)[0])
    d.tick(52)
    assert notifies(d.tick(53))


def test_resume_when_not_paused_is_counted():
    d = armed()
    out = d.message(Resume(), 1)
    assert metrics(out, "iim_detector_ignored_total")


def test_a_new_pause_replaces_the_end():
    d = armed()
    d.message(Pause(100), 20)
    d.message(Pause(10), 30)
    assert d.next_deadline() == 40


def test_zero_pause_is_over_at_once():
    d = armed()
    d.message(Pause(0), 20)
    assert d.state is State.ARMED


def test_hello_cancels_a_pause():
    d = armed()
    d.message(Pause(1000), 20)
    d.message(hello(), 30)
    assert d.state is State.ARMED
    assert d.snapshot(30)["paused_until"] is None


def test_pause_during_cooldown_is_honoured_when_it_ends():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(hello(), 60)
    d.message(Pause(1000), 100)
    d.tick(305)
    assert d.state is State.PAUSED
    assert d.next_deadline() == 1100


# ---------------------------------------------------------------- goodbye


def test_goodbye_then_silence_is_not_a_failure():
    d = armed()
    beat(d, 1, 20)
    d.message(Goodbye("shutdown"), 20)
    assert d.state is State.DEPARTED
    assert d.next_deadline() is None
    assert not notifies(d.tick(1_000_000))
    out = d.message(hb(), 1_000_001)
    assert metrics(out, "iim_detector_ignored_total")
    assert not notifies(d.message(Failure(1, "sshd", "x"), 1_000_002))
    d.message(hello(), 1_000_003)
    assert d.state is State.ARMED
    assert d.next_deadline() == 1_000_013


# ---------------------------------------------------------------- channel


def test_channel_close_stops_hang_detection():
    d = armed()
    beat(d, 1, 20)
    out = d.channel_closed(20.5)
    assert d.state is State.UNKNOWN
    assert "not a failure" in text(logs(out, logging.INFO)[0])
    assert d.next_deadline() is None
    assert not notifies(d.tick(1000))
    d.channel_connected(1000)
    assert d.state is State.UNKNOWN
    assert not notifies(d.tick(2000))  # a silent reconnect is not watched


def test_heartbeat_after_reconnect_rearms_with_the_previous_interval():
    d = armed(interval=2.0)
    beat(d, 2, 20, 2.0)
    d.channel_closed(21)
    d.channel_connected(30)
    out = d.message(hb(), 31)
    assert d.state is State.ARMED and not notifies(out)
    assert d.snapshot(31)["heartbeat_interval"] == 2.0
    d.tick(35)
    assert not notifies(d.tick(before(37)))
    assert notifies(d.tick(37))


def test_hello_after_reconnect_applies_min_uptime_again():
    d = armed()
    d.channel_closed(21)
    d.channel_connected(30)
    d.message(hello(), 30)
    assert d.next_deadline() == 40


def test_failure_after_reconnect_without_hello_notifies():
    d = armed()
    d.channel_closed(21)
    d.channel_connected(30)
    assert notifies(d.message(Failure(1, "sshd", "gone"), 31))


def test_pause_survives_a_channel_drop():
    d = armed()
    d.message(Pause(100), 20)
    d.channel_closed(21)
    assert d.state is State.UNKNOWN
    d.channel_connected(22)
    d.message(hb(), 23)
    assert d.state is State.PAUSED
    assert d.next_deadline() == 120


def test_message_without_channel_connected_counts_as_connected():
    d = Detector(UUID, CFG, 0)
    out = d.message(hello(), 0)
    assert metrics(out, "iim_detector_implicit_connect_total")
    assert d.state is State.ARMED and d.next_deadline() == 10


# ---------------------------------------------------------------- domain


@pytest.mark.parametrize("held", [DomainState.PAUSED, DomainState.MIGRATING])
def test_domain_pause_or_migration_then_resume_restarts_the_timer(held):
    d = armed()
    beat(d, 1, 20)
    d.tick(22.5)
    assert d.state is State.SUSPECT
    d.domain_state(held, 22.6)
    assert d.state is State.ARMED
    assert d.next_deadline() is None
    assert d.snapshot(30)["hang_detection"] == f"held (domain {held.value})"
    assert not notifies(d.tick(500))
    out = d.domain_state(DomainState.RUNNING, 500)
    assert not notifies(out)  # no instant hang after a host-side pause
    assert d.next_deadline() == 502
    d.tick(502)
    assert not notifies(d.tick(before(503)))
    assert notifies(d.tick(503))


@pytest.mark.parametrize("stopped", [DomainState.SHUTDOWN, DomainState.SHUTOFF,
                                     DomainState.CRASHED])
def test_domain_stop_never_notifies_and_needs_a_new_hello(stopped):
    d = armed()
    beat(d, 1, 20)
    d.domain_state(stopped, 21)
    assert d.state is State.UNKNOWN
    assert not notifies(d.tick(1000))
    d.domain_state(DomainState.RUNNING, 1000)
    assert not notifies(d.tick(2000))
    assert metrics(d.message(hb(), 2001), "iim_detector_ignored_total")  # new boot: hello first
    d.message(hello(), 2002)
    assert d.next_deadline() == 2012


def test_unknown_domain_state_counts_as_running():
    d = armed()
    beat(d, 1, 20)
    d.domain_state(DomainState.UNKNOWN, 20.5)
    d.tick(22)
    assert notifies(d.tick(23))


def test_repeated_domain_state_is_counted():
    d = armed()
    out = d.domain_state(DomainState.RUNNING, 1)
    assert metrics(out, "iim_detector_ignored_total")


def test_initial_domain_state_is_a_constructor_choice():
    d = armed(domain=DomainState.MIGRATING)
    assert d.next_deadline() is None
    d.domain_state(DomainState.RUNNING, 50)
    assert d.next_deadline() == 52


# ---------------------------------------------------------------- status, clock


def test_snapshot_is_json_and_reports_what_status_needs():
    d = armed()
    d.message(hb(1, sshd="ok"), 4)
    d.message(Failure(2, "sshd", "gone"), 5)
    snap = json.loads(json.dumps(d.snapshot(7)))
    assert snap["state"] == "cooldown" and snap["since"] == 5
    assert snap["last_heartbeat_age"] == 3
    assert snap["heartbeat_interval"] == 1.0
    assert snap["checks_summary"]["failed"] == 1
    assert snap["last_failure"]["reason"] == "check sshd failed: gone"
    assert snap["notifications_in_window"] == 1 and snap["storm_capped"] == 0
    assert snap["guest_reported"] == {
        "informational": True, "agent_version": "1.0", "boot_id": "boot-1", "checks": ["sshd"]}


def test_time_going_backwards_is_clamped_and_counted():
    d = armed()
    out = d.tick(5)
    out = d.tick(4)
    assert metrics(out, "iim_detector_clock_backwards_total")
    assert d.next_deadline() == 10


def test_every_log_is_lazy_and_formats():
    d = armed()
    out = d.message(Pause(99999, "backup"), 1) + d.message(Failure(1, "a", "b"), 2)
    out += d.tick(5000) + d.message(Goodbye(), 5001) + d.channel_closed(5002)
    for lg in logs(out):
        assert isinstance(lg.args, tuple)
        text(lg)


# ---------------------------------------------------------------- random sequences

HCFG = DetectorConfig(missed_heartbeats=3, min_interval=0.5, max_interval=2.0, min_uptime=2.0,
                      max_pause=20.0, cooldown=5.0, max_notifications=2,
                      notification_window=300.0, late_tolerance=2.0)
RUNS = {DomainState.RUNNING, DomainState.UNKNOWN}

HELLO_OP = st.tuples(st.just("hello"), st.sampled_from([0.1, 0.5, 1.0, 2.0, 60.0]))
BEAT_OP = st.tuples(st.just("heartbeat"), st.none())
FAIL_OP = st.tuples(st.just("failure"), st.sampled_from(["a", "b"]))
TICK_OPS = (st.tuples(st.just("tick"), st.none()), st.tuples(st.just("tick_deadline"), st.none()))
# Repeats weight the common inputs, so sequences reach cooldowns and the storm cap.
op = st.one_of(
    HELLO_OP, HELLO_OP, BEAT_OP, BEAT_OP, BEAT_OP, BEAT_OP, FAIL_OP, FAIL_OP, *TICK_OPS, *TICK_OPS,
    st.tuples(st.just("recovered"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("goodbye"), st.none()),
    st.tuples(st.just("pause"), st.sampled_from([0.0, 1.0, 5.0, 100.0])),
    st.tuples(st.just("resume"), st.none()),
    st.tuples(st.just("connect"), st.none()),
    st.tuples(st.just("close"), st.none()),
    st.tuples(st.just("domain"), st.sampled_from(list(DomainState))),
)
DTS = [0.0, 0.25, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0]
step = st.tuples(st.sampled_from(DTS), op)


# IIM_HYPOTHESIS_EXAMPLES=20000 for a longer hunt (about 2 minutes).
EXAMPLES = int(os.environ.get("IIM_HYPOTHESIS_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=20, max_size=80))
def test_random_sequences_keep_the_invariants(steps):
    now = 0.0
    d = Detector(UUID, HCFG, now)
    armed_model = False  # hello seen, no goodbye or domain stop since
    pause_end = None
    domain = DomainState.RUNNING
    channel = False
    sent: list[float] = []
    for dt, (kind, arg) in steps:
        now += dt
        deadline = d.next_deadline()
        if kind == "tick_deadline":
            if deadline is None:
                continue
            assert_deadline_is_exact(d)
            now = deadline
        out = _apply(d, kind, arg, now)
        for n in notifies(out):
            assert n.instance_uuid == UUID
            assert n.at <= now
            assert armed_model, "notified an instance that is not armed or departed"
            assert domain in RUNS, "notified while the domain is not running"
            assert pause_end is None or n.at >= pause_end, "notified during a guest pause"
            if n.kind == "guest_hang":
                assert channel, "hang notified while the channel is closed"
            if sent:
                assert n.at - sent[-1] >= HCFG.cooldown, "notified during the cooldown"
            sent.append(n.at)
            assert sum(1 for t in sent if t > n.at - HCFG.notification_window) <= 2
        # the model, after the call (the call saw the old domain state)
        if kind == "hello":
            armed_model, pause_end = True, None
        elif kind == "goodbye":
            armed_model = False
        elif kind == "pause" and armed_model:
            pause_end = now + min(arg, HCFG.max_pause)
        elif kind == "resume" and armed_model:
            pause_end = None
        elif kind == "domain":
            stop = arg not in RUNS and arg not in (DomainState.PAUSED, DomainState.MIGRATING)
            if stop and arg is not domain:  # an unchanged state is no new event
                armed_model, pause_end = False, None
            domain = arg
        if kind in ("connect", "hello", "heartbeat", "failure", "recovered", "goodbye",
                    "pause", "resume"):
            channel = True
        elif kind == "close":
            channel = False
        nd = d.next_deadline()
        assert nd is None or nd > now
        assert isinstance(d.state, State)
        json.dumps(d.snapshot(now))


def _apply(d: Detector, kind, arg, now):
    if kind == "hello":
        return d.message(hello(arg), now)
    if kind == "heartbeat":
        return d.message(hb(), now)
    if kind == "failure":
        return d.message(Failure(1, arg, "down"), now)
    if kind == "recovered":
        return d.message(Recovered(1, arg), now)
    if kind == "goodbye":
        return d.message(Goodbye(), now)
    if kind == "pause":
        return d.message(Pause(arg, "maintenance"), now)
    if kind == "resume":
        return d.message(Resume(), now)
    if kind == "connect":
        return d.channel_connected(now)
    if kind == "close":
        return d.channel_closed(now)
    if kind == "domain":
        return d.domain_state(arg, now)
    return d.tick(now)


def test_outputs_are_frozen_values():
    n = Notify("guest_hang", UUID, "r", 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.at = 2.0  # type: ignore[misc]
