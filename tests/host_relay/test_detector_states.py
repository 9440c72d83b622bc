"""Tests of host_relay.detector: pause frames, goodbye, channel, domain and status (0.1.0 agents).

Time is just numbers, nothing sleeps.
"""

from __future__ import annotations

import dataclasses

import pytest

from host_relay.detector import (
    Detector,
    DetectorConfig,
    DomainState,
    Notify,
    State,
)
from iim_protocol.messages import Failure, Goodbye, Pause, Resume, Sync
from tests.host_relay.detector_testing import (
    CFG,
    armed,
    assert_deadline_is_exact,
    beat,
    before,
    ignored,
    notifies,
    pause_changes,
    suppressed,
)
from tests.host_relay.detector_testing import hb01 as hb
from tests.host_relay.detector_testing import hello01 as hello

# ---------------------------------------------------------------- pause frames (0.1.0 edges)


def test_pause_is_clamped_and_suppresses_until_it_expires_then_hang():
    d = armed()
    beat(d, 1, 20)
    out = d.message(Pause(7200.0, "backup"), 20)
    assert d.state is State.PAUSED
    [p] = pause_changes(out)
    assert (p.until, p.asked, p.reason, p.source) == (3620.0, 7200.0, "backup", "frame")
    assert d.counters.clamped["pause"] == 1
    out = d.message(Failure(1, "sshd", "frozen"), 100)
    assert not notifies(out) and suppressed(out, "paused")
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
    assert d.state is State.ARMED and pause_changes(out)[0].until is None
    d.tick(52)
    assert notifies(d.tick(53))


def test_resume_when_not_paused_is_counted():
    d = armed()
    assert ignored(d.message(Resume(), 1), "in_armed")


def test_a_new_pause_replaces_the_end():
    d = armed()
    d.message(Pause(100), 20)
    d.message(Pause(10), 30)
    assert d.next_deadline() == 40


def test_zero_pause_is_over_at_once():
    d = armed()
    d.message(Pause(0), 20)
    assert d.state is State.ARMED


def test_a_new_start_of_an_0_1_0_agent_cancels_a_pause_it_re_sends():
    d = armed()
    d.message(Pause(1000), 20)
    d.message(hello(boot="boot-2"), 30)
    assert d.state is State.ARMED and d.status(30).pause is None


def test_pause_during_cooldown_is_honoured_when_it_ends():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    d.message(hello(boot="boot-2"), 60)
    d.message(Pause(1000), 100)
    d.tick(305)
    assert d.state is State.PAUSED
    assert d.next_deadline() == 1100


# ---------------------------------------------------------------- goodbye


def test_goodbye_then_silence_is_not_a_failure():
    d = armed()
    beat(d, 1, 20)
    d.message(Goodbye("shutdown"), 20)
    assert d.state is State.DEPARTED and d.next_deadline() is None
    assert not notifies(d.tick(1_000_000))
    assert ignored(d.message(hb(), 1_000_001), "in_departed")
    assert not notifies(d.message(Failure(1, "sshd", "x"), 1_000_002))
    d.message(hello(boot="boot-2"), 1_000_003)
    assert d.state is State.ARMED
    assert d.next_deadline() == 1_000_013


def test_goodbye_reload_then_the_same_agent_says_hello_again():
    d = armed()
    d.message(Goodbye("reload"), 5)
    d.message(hello(), 6)
    assert d.state is State.ARMED and not d.record().incident


# ---------------------------------------------------------------- channel


def test_channel_close_holds_hang_detection_and_a_reconnect_restarts_the_timer():
    d = armed()
    beat(d, 1, 20)
    d.channel_closed(20.5)
    assert d.state is State.ARMED and d.status(21).hang_detection == "held (channel closed)"
    assert d.next_deadline() is None
    assert not notifies(d.tick(1000))
    d.channel_connected(1000)  # the silence while closed is not the guest's
    assert d.next_deadline() == 1002
    d.tick(1002)
    assert notifies(d.tick(1003))  # but a guest silent after the reconnect is hung


def test_heartbeat_after_reconnect_keeps_the_interval():
    d = armed(interval=2.0)
    beat(d, 2, 20, 2.0)
    d.channel_closed(21)
    d.channel_connected(30)
    out = d.message(hb(), 31)
    assert d.state is State.ARMED and not notifies(out)
    assert d.status(31).interval == 2.0
    d.tick(35)
    assert not notifies(d.tick(before(37)))
    assert notifies(d.tick(37))


def test_failure_after_reconnect_without_hello_notifies():
    d = armed()
    d.channel_closed(21)
    d.channel_connected(30)
    assert notifies(d.message(Failure(1, "sshd", "gone"), 31))


def test_pause_survives_a_channel_drop():
    d = armed()
    d.message(Pause(100), 20)
    d.channel_closed(21)
    d.channel_connected(22)
    d.message(hb(), 23)
    assert d.state is State.PAUSED
    assert d.next_deadline() == 120


def test_message_without_channel_connected_counts_as_connected():
    d = Detector(CFG, 0)
    out = d.message(hello(), 0)
    assert ignored(out, "implicit")
    assert d.state is State.ARMED and d.next_deadline() == 10


def test_a_host_message_from_the_guest_is_ignored():
    d = armed()
    out = d.message(Sync(), 1)
    assert ignored(out, "unknown_type") and d.state is State.ARMED


# ---------------------------------------------------------------- domain


@pytest.mark.parametrize("held", [DomainState.PAUSED, DomainState.MIGRATING])
def test_domain_pause_or_migration_then_resume_restarts_the_timer(held):
    d = armed()
    beat(d, 1, 20)
    d.tick(22.5)
    assert d.state is State.SUSPECT
    d.domain_state(held, 22.6)
    assert d.state is State.ARMED and d.next_deadline() is None
    assert d.status(30).hang_detection == f"held (domain {held.value})"
    assert not notifies(d.tick(500))
    assert not notifies(d.domain_state(DomainState.RUNNING, 500))
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
    assert d.state is State.UNKNOWN and not d.record().armed
    assert not notifies(d.tick(1000))
    d.domain_state(DomainState.RUNNING, 1000)
    assert not notifies(d.tick(2000))
    assert ignored(d.message(hb(), 2001), "before_hello")  # new boot: a 0.1.0 agent says hello
    d.message(hello(boot="boot-2"), 2002)
    assert d.next_deadline() == 2012


def test_unknown_domain_state_counts_as_running():
    d = armed()
    beat(d, 1, 20)
    d.domain_state(DomainState.UNKNOWN, 20.5)
    d.tick(22)
    assert notifies(d.tick(23))


def test_repeated_domain_state_is_counted():
    assert ignored(armed().domain_state(DomainState.RUNNING, 1), "unchanged")


def test_initial_domain_state_is_a_constructor_choice():
    d = armed(domain=DomainState.MIGRATING)
    assert d.next_deadline() is None
    d.domain_state(DomainState.RUNNING, 50)
    assert d.next_deadline() == 52


# ---------------------------------------------------------------- status, clock, outputs


def test_status_reports_what_status_needs():
    d = armed()
    d.message(hb(1, sshd="ok"), 4)
    d.message(Failure(2, "sshd", "gone"), 5)
    st = d.status(7)
    assert (st.state, st.since, st.last_heard_age, st.interval) == (
        State.COOLDOWN, 5, 3, 1.0)
    assert st.checks == (("sshd", "failed"),)
    assert st.incident.reason == "check sshd failed: gone"
    assert st.cooldown_remaining == 298 and st.notifications_in_window == 1
    assert (st.boot_id, st.agent_version) == ("boot-1", "0.1.0")
    assert st.counters.notified["process_failure"] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.state = State.ARMED  # type: ignore[misc]


def test_status_counts_down_to_the_hang():
    d = armed(DetectorConfig(missed_heartbeats=3, min_uptime=0))
    d.message(hb(), 2)
    assert d.status(3).hang_in == 2 and d.status(3).hang_detection == "active"


def test_time_going_backwards_is_clamped_and_counted():
    d = armed()
    d.tick(5)
    assert ignored(d.tick(4), "clock_backwards")
    assert d.next_deadline() == 10


def test_outputs_are_frozen_values():
    n = Notify("guest_hang", None, "r", 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.at = 2.0  # type: ignore[misc]
