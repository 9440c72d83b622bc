"""The detector's witness inputs (issue 12): each decision path, sans-I/O.

Time is just numbers.  CFG: 3 missed heartbeats, interval 1 s, min_uptime
10 s, cooldown 300 s; the agent is armed at 0 and last heard at 20.
"""

from __future__ import annotations

from host_relay.detector import (
    AgentLost,
    Detector,
    DetectorRecord,
    DomainState,
    HangHeld,
    State,
    WitnessEvent,
)
from host_relay.detector_outputs import GUEST_HANG, PROCESS_FAILURE
from iim_protocol.messages import Failure
from tests.host_relay.detector_testing import armed, beat, notifies, of, persists, restart
from tests.host_relay.detector_testing import hb01 as hb

QGA_TIMEOUT = WitnessEvent("qemu-ga", "guest-ping unanswered after 2s")
QGA_ANSWERS = WitnessEvent("qemu-ga", "guest-ping answered in 0.01s")
PANIC = WitnessEvent("panic", "panicked")
PANIC_EVENT = WitnessEvent("panic", "panicked", stops_domain=True)  # as silence_watch sends it
NONE = WitnessEvent("none", "qemu-guest-agent not asked; no bulk stats")


def silent_at_20() -> Detector:
    d = armed()
    beat(d, 1, 20)
    return d


def test_silence_is_exposed_only_while_hang_detection_runs():
    d = armed()
    assert d.silence(5.0) is None  # min_uptime
    beat(d, 1, 20)
    assert d.silence(21.0) == (20.0, 1.0)
    d.channel_closed(21.0)
    assert d.silence(21.5) is None  # the timer holds
    d.channel_connected(22.0)
    assert d.silence(22.5) == (22.0, 1.0)  # closed time is not silence


def test_confirmed_hang_notifies_at_once_naming_the_witness():
    d = silent_at_20()
    out = d.witness("confirmed_hang", QGA_TIMEOUT, 22.5)
    [note] = notifies(out)
    assert note.kind == GUEST_HANG and note.at == 22.5
    assert "confirmed by qemu-ga" in note.reason and "unanswered" in note.reason
    assert "2.5s" in note.reason
    assert d.state is State.COOLDOWN and persists(out)
    st = d.status(22.5)
    assert st.witness == "qemu-ga" and st.incident.reason == note.reason
    assert d.counters.witness["confirmed_hang:qemu-ga"] == 1
    # the detector's own deadline (23) does not notify a second time
    assert not notifies(d.tick(30.0))


def test_a_panic_event_notifies_even_before_the_silence_counts():
    d = silent_at_20()
    [note] = notifies(d.witness("confirmed_hang", PANIC, 20.3))
    assert "confirmed by panic: panicked" in note.reason


def test_a_panic_is_notified_though_libvirt_said_paused_first():
    # Seen under load in CI: QEMU stops the panicked guest, so libvirt's SUSPENDED event
    # can reach the relay before its CRASHED (PANICKED) event, which decides the panic.
    d = silent_at_20()
    d.domain_state(DomainState.PAUSED, 20.2)
    [note] = notifies(d.witness("confirmed_hang", PANIC_EVENT, 20.3))
    assert "confirmed by panic: panicked" in note.reason
    assert not notifies(d.domain_state(DomainState.CRASHED, 20.4))  # then libvirt's CRASHED
    # A witness that is not the panic itself does not override a paused domain.
    d = silent_at_20()
    d.domain_state(DomainState.PAUSED, 20.2)
    assert not notifies(d.witness("confirmed_hang", PANIC, 20.3))
    assert d.counters.suppressed["domain_paused"] == 1


def test_agent_lost_holds_the_hang_deadline_and_does_not_notify():
    d = silent_at_20()
    out = d.witness("agent_lost", QGA_ANSWERS, 22.5)
    assert not notifies(out) and d.state is State.AGENT_LOST
    [lost] = of(out, AgentLost)
    assert lost.first and lost.by == "qemu-ga" and lost.since == 20.0
    assert lost.hold_until == 25.5 and d.next_deadline() == 25.5
    # the witness answers again before the hold ends: held on; never a notification
    t = 22.5
    for _ in range(100):
        t += 2.0
        out = d.witness("agent_lost", QGA_ANSWERS, t) + d.tick(t)
        assert not notifies(out)
        assert not [o for o in of(out, AgentLost) if o.first]
    st = d.status(t)
    assert st.state is State.AGENT_LOST and st.agent_lost_for == t - 20.0
    assert st.hang_detection.startswith("held (agent lost; qemu-ga answers")


def test_agent_lost_then_qemu_ga_stops_answering_is_a_confirmed_hang():
    d = silent_at_20()
    d.witness("agent_lost", QGA_ANSWERS, 22.5)
    [note] = notifies(d.witness("confirmed_hang", QGA_TIMEOUT, 24.5))
    assert "qemu-ga" in note.reason and d.state is State.COOLDOWN


def test_agent_lost_whose_witness_goes_quiet_falls_back_to_the_rule():
    d = silent_at_20()
    d.witness("agent_lost", QGA_ANSWERS, 22.5)
    assert not notifies(d.witness("no_witness", NONE, 24.5))
    assert not notifies(d.tick(25.4))
    [note] = notifies(d.tick(25.5))  # the hold, one detector window from the answer
    assert "agent lost" in note.reason and "no heartbeat" in note.reason


def test_the_agent_speaking_again_ends_agent_lost():
    d = silent_at_20()
    d.witness("agent_lost", QGA_ANSWERS, 22.5)
    d.message(hb(), 30.0)
    assert d.state is State.ARMED and d.status(30.0).agent_lost_for is None
    assert d.status(30.0).witness is None


def test_notify_on_agent_lost_after_its_timeout_once():
    d = silent_at_20()
    ask = WitnessEvent("qemu-ga", "answered", notify_lost_after=60.0)
    t = 22.5
    while t < 79.0:
        assert not notifies(d.witness("agent_lost", ask, t))
        t += 2.0
    [note] = notifies(d.witness("agent_lost", ask, 80.5))
    assert note.kind == GUEST_HANG and "agent lost for 60s" in note.reason
    assert d.state is State.COOLDOWN


def test_agent_lost_since_survives_a_restart():
    d = silent_at_20()
    d.witness("agent_lost", QGA_ANSWERS, 22.5)
    assert d.record().agent_lost_since == 20.0
    new = restart(d, 40.0)
    assert new.state is State.ARMED  # the witnesses decide again after the restart
    ask = WitnessEvent("qemu-ga", "answered", notify_lost_after=60.0)
    [lost] = of(new.witness("agent_lost", ask, 42.5), AgentLost)  # asked 2.5 s in
    assert lost.since == 20.0
    t = 42.5
    while t < 78.0:  # 58.5 s lost at the last of these: not yet
        t += 2.0
        assert not notifies(new.witness("agent_lost", ask, t)), t
    [note] = notifies(new.witness("agent_lost", ask, 80.5))  # 60.5 s since 20, counted
    assert "agent lost for" in note.reason and note.at == 80.5


def test_an_old_record_without_agent_lost_since_reads():
    data = DetectorRecord(armed=True, interval=1.0).to_json()
    del data["agent_lost_since"]
    assert DetectorRecord.from_json(data).agent_lost_since is None


def test_no_witness_keeps_todays_rule_exactly():
    d, ref = silent_at_20(), silent_at_20()
    assert not notifies(d.witness("no_witness", NONE, 22.5))
    ref.tick(22.5)
    assert d.state is ref.state is State.SUSPECT
    assert d.next_deadline() == ref.next_deadline() == 23.0
    a, b = notifies(d.tick(23.0)), notifies(ref.tick(23.0))
    assert len(a) == len(b) == 1 and a[0].reason == b[0].reason
    assert d.counters.witness["no_witness:none"] == 1


def test_the_guard_holds_a_hang_and_releases_it_when_it_lets_go():
    d = silent_at_20()
    d.host_hold("5 of 8 armed instances went silent within 10s", 21.0)
    out = d.tick(23.0)
    assert not notifies(out) and d.state is State.SUSPECT
    [held] = of(out, HangHeld)
    assert "went silent" in held.why and "no heartbeat for 3.0s" in held.reason
    assert d.next_deadline() is None
    assert d.status(30.0).hang_held and d.status(30.0).hang_detection.startswith("held (host")
    assert not notifies(d.tick(100.0))
    [note] = notifies(d.host_hold("", 101.0))
    assert "held 78.0s by the host-wide silence guard" in note.reason
    assert d.state is State.COOLDOWN


def test_the_guard_releases_a_held_hang_on_its_own_witness():
    d = silent_at_20()
    d.host_hold("burst", 21.0)
    d.tick(23.0)
    [note] = notifies(d.witness("confirmed_hang", QGA_TIMEOUT, 24.0))
    assert "qemu-ga" in note.reason


def test_a_held_hang_is_over_when_the_guest_speaks():
    d = silent_at_20()
    d.host_hold("burst", 21.0)
    d.tick(23.0)
    d.message(hb(), 24.0)
    assert not notifies(d.host_hold("", 25.0)) and d.state is State.ARMED
    assert d.next_deadline() is not None


def test_the_guard_never_holds_a_process_failure():
    d = silent_at_20()
    d.host_hold("burst", 20.5)
    [note] = notifies(d.message(Failure(1, "sshd", "exited 1"), 20.6))
    assert note.kind == PROCESS_FAILURE


def test_witness_inputs_outside_silence_are_ignored_not_errors():
    d = armed()
    d.message(Failure(1, "sshd", "x"), 20.0)  # cooldown
    assert d.state is State.COOLDOWN
    assert not notifies(d.witness("confirmed_hang", QGA_TIMEOUT, 21.0))
    assert d.counters.ignored["witness_hung:in_cooldown"] == 1
