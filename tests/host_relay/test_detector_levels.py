"""Level-triggered detection (issue 9): every heartbeat says the agent's whole state.

Cases 1, 4 and 5 of issue 9 are here at the detector level; each test named
``test_issue9_case*`` fails on the 0.1.0 detector.
"""

from __future__ import annotations

from host_relay.detector import (
    DetectorConfig,
    DomainState,
    IncidentClosed,
    Started,
    State,
)
from iim_protocol.messages import Failure, Goodbye, Pause, Recovered
from tests.host_relay.detector_testing import (
    CFG,
    armed,
    beat,
    connected,
    hb01,
    hb02,
    hello01,
    hello02,
    ignored,
    moves,
    notifies,
    of,
    pause,
    pause_changes,
    persists,
    suppressed,
)

# ---------------------------------------------------------------- arming by heartbeat


def test_a_heartbeat_arms_a_detector_that_never_saw_a_hello():
    d = connected()
    out = d.message(hb02(0, interval=2.0), 0)
    assert d.state is State.ARMED
    [s] = of(out, Started)
    assert (s.interval, s.boot_id, s.start_id, s.start) == (2.0, "boot-1", "start-1", True)
    [p] = persists(out)
    assert p.record.armed and p.record.interval == 2.0 and p.record.boot_id == "boot-1"
    assert d.next_deadline() == 10.0  # min_uptime after the first contact
    [n] = notifies(d.tick(10.0))
    assert n.kind == "guest_hang"


def test_the_hello_that_follows_the_heartbeat_is_no_new_start():
    d = connected()
    d.message(hb02(0), 0)
    out = d.message(hello02(), 0.5)
    assert not of(out, Started) and not persists(out)
    assert d.next_deadline() == 10.0


def test_a_heartbeat_interval_change_is_used_and_stored():
    d = connected()
    d.message(hb02(0, interval=1.0), 0)
    out = d.message(hb02(1, interval=5.0), 11)
    [s] = of(out, Started)
    assert (s.interval, s.start) == (5.0, False)
    assert persists(out)[0].record.interval == 5.0


# ---------------------------------------------------------------- issue 9 case 1


def test_issue9_case1_failure_reported_by_heartbeats_before_any_hello_is_notified():
    # The relay starts after the agent: the failure frame went to nobody; every
    # 0.2 heartbeat since says the check is failed.
    d = connected()
    out = d.message(hb02(0, sshd="failed"), 0)
    [n] = notifies(out)
    assert (n.kind, n.check, n.at) == ("process_failure", "sshd", 0)
    assert "reported failed by a heartbeat" in n.reason
    out = beat(d, 1, 60, make=hb02, sshd="failed") + d.message(hello02(), 30)
    assert not notifies(out)  # once per incident


def test_issue9_case1_an_0_1_0_agent_is_notified_by_its_heartbeats_level():
    # 0.1.0 agent: no interval in its heartbeats, a periodic hello 30 s later.
    d = connected()
    out = beat(d, 0, 29, sshd="failed")
    out += d.message(hello01(), 30)
    out += beat(d, 31, 90, sshd="failed")
    assert len(notifies(out)) == 1
    assert notifies(out)[0].check == "sshd"


def test_issue9_case1_a_failure_frame_needs_no_hello():
    d = connected()
    [n] = notifies(d.message(Failure(1, "sshd", "exited"), 3))
    assert n.reason == "check sshd failed: exited"


# ---------------------------------------------------------------- once per incident


def armed02(cfg: DetectorConfig = CFG):
    d = connected(cfg)
    d.message(hello02(), 0)
    return d


def test_failure_frame_then_heartbeats_reporting_it_notify_once():
    d = armed02()
    out = d.message(Failure(1, "sshd", "gone"), 5)
    out += beat(d, 6, 2000, make=hb02, sshd="failed")
    assert len(notifies(out)) == 1
    assert d.state is State.FAILED  # cooldown over, incident still open


def test_heartbeat_first_then_the_late_failure_frame_notify_once():
    d = armed02()
    out = d.message(hb02(1, sshd="failed"), 5) + d.message(Failure(2, "sshd", "gone"), 5.1)
    assert len(notifies(out)) == 1
    assert [s.why for s in suppressed(out)] == ["cooldown"]


def test_a_heartbeat_reporting_the_check_ok_ends_the_incident():
    # The recovered frame was lost; the level heals it.
    d = armed02(DetectorConfig(missed_heartbeats=3, cooldown=10))
    d.message(Failure(1, "sshd", "gone"), 5)
    beat(d, 6, 20, make=hb02, sshd="failed")
    assert d.state is State.FAILED
    out = d.message(hb02(99, sshd="ok"), 21)
    assert of(out, IncidentClosed)[0].why == "check sshd recovered (heartbeat)"
    assert d.state is State.ARMED
    [n] = notifies(d.message(hb02(100, sshd="failed"), 22))  # a new incident
    assert n.at == 22


def test_heartbeat_level_failures_are_suppressed_once_per_check_not_per_beat():
    d = armed02()
    d.message(Pause(1000, "upgrade"), 1)
    out = beat(d, 2, 100, make=hb02, paused=pause(900), sshd="failed", nginx="ok")
    assert [(s.check, s.why) for s in suppressed(out)] == [("sshd", "paused")]
    assert d.counters.suppressed["paused"] == 1


def test_a_failure_seen_while_the_domain_migrates_is_notified_once_it_runs():
    d = armed02()
    d.domain_state(DomainState.MIGRATING, 1)
    out = beat(d, 2, 10, make=hb02, sshd="failed")
    assert not notifies(out) and len(suppressed(out, "domain_migrating")) == 1
    d.domain_state(DomainState.RUNNING, 11)
    [n] = notifies(d.message(hb02(50, sshd="failed"), 11.5))
    assert n.at == 11.5


# ---------------------------------------------------------------- issue 9 case 5: starts


def test_issue9_case5_a_periodic_hello_leaves_an_open_incident_alone():
    for again in (hello02(), hello01()):  # a 0.2 and a 0.1.0 agent repeating themselves
        d = connected()
        d.message(again, 0)
        beat(d, 1, 20, make=hb02 if again.start_id else hb01)
        assert notifies(d.message(Failure(1, "sshd", "gone"), 20))
        out = d.message(again, 21.5)  # 1.5 s later, the process still dead
        assert not of(out, IncidentClosed) and not persists(out)
        assert d.status(21.5).incident is not None
        d.tick(320)
        assert d.state is State.FAILED  # cooldown over, incident not over


def test_issue9_case5_a_periodic_hello_does_not_restart_min_uptime():
    d = connected()
    d.message(hello02(), 0)
    beat(d, 1, 15, make=hb02)
    d.message(hello02(), 15)
    assert d.next_deadline() == 17  # SUSPECT at 17, hang at 18: not held until 25
    d.tick(17)
    [n] = notifies(d.tick(18))
    assert n.kind == "guest_hang"


def test_a_new_start_id_is_a_start():
    d = connected()
    d.message(hello02(), 0)
    beat(d, 1, 15, make=hb02)
    d.message(Failure(1, "sshd", "gone"), 15)
    out = d.message(hello02(start="start-2"), 16)  # the agent restarted, same boot
    assert of(out, IncidentClosed)[0].why == "the agent started again"
    assert persists(out)[0].record.start_id == "start-2"
    assert d.status(16).hang_detection == "off (cooldown)"
    d.tick(316)
    assert d.next_deadline() == 315 + 2  # fresh timer from the cooldown's end


def test_a_heartbeat_from_a_new_boot_is_a_start_even_if_its_hello_was_lost():
    d = armed02()
    d.message(Failure(1, "sshd", "gone"), 5)
    out = d.message(hb02(0, boot="boot-2", start="s-9"), 100)
    assert of(out, IncidentClosed) and of(out, Started)[0].start
    assert d.record().boot_id == "boot-2"


def test_an_0_1_0_heartbeat_is_never_a_start():
    d = connected()
    d.message(hello02(), 0)
    d.message(Failure(1, "sshd", "gone"), 1)
    out = beat(d, 2, 10)
    assert not of(out, IncidentClosed) and not of(out, Started)


def test_after_goodbye_heartbeats_of_the_same_start_are_ignored_a_new_start_arms():
    d = connected()
    d.message(hello02(), 0)
    d.message(Goodbye("stop"), 5)
    assert ignored(d.message(hb02(1), 6), "in_departed")
    assert d.state is State.DEPARTED
    d.message(hb02(0, start="start-2"), 7)
    assert d.state is State.ARMED


# ---------------------------------------------------------------- issue 9 case 4: pause levels


def _maintenance(d, start, end, *, process_dead_from, pause_end, hello_every=30.0):
    """A 0.2 agent paused until ``pause_end``: heartbeats every second carry the
    remaining pause, a hello every ``hello_every`` s; the process dies at
    ``process_dead_from`` (failure frame + heartbeat levels)."""
    out, t, seq = [], start, 0
    while t <= end:
        state = "failed" if t >= process_dead_from else "ok"
        if t == process_dead_from:
            out += d.message(Failure(seq, "sshd", "stopped for maintenance"), t)
        lvl = pause(pause_end - t, "upgrade") if t < pause_end else None
        if (t - start) % hello_every == 0:
            out += d.message(hello02(paused=lvl), t)
        out += d.message(hb02(seq, paused=lvl, sshd=state), t)
        t += 1.0
        seq += 1
    return out


def test_issue9_case4_a_pause_holds_across_heartbeats_and_hellos():
    d = connected()
    d.message(hello02(), 0)
    beat(d, 1, 9, make=hb02, sshd="ok")
    out = d.message(Pause(600, "upgrade"), 10)  # iim-agent pause --for 10m
    out += _maintenance(d, 10, 130, process_dead_from=41, pause_end=610)
    assert not notifies(out)
    assert d.state is State.PAUSED
    assert abs(d.status(130).pause.remaining - 480) < 1e-6
    assert len(pause_changes(out)) == 1  # began; the level then only confirms it


def test_issue9_case4_the_pause_ends_when_the_guest_says_and_the_failure_is_notified():
    d = connected()
    d.message(hello02(), 0)
    out = _maintenance(d, 1, 700, process_dead_from=41, pause_end=610)
    [n] = notifies(out)
    assert (n.kind, n.check, n.at) == ("process_failure", "sshd", 610)


def test_issue9_case4_an_0_1_0_agent_keeps_its_edge_pause_over_periodic_hellos():
    d = armed()
    beat(d, 1, 9)
    d.message(Pause(600, "upgrade"), 10)
    out = []
    for t in range(11, 131):
        if t % 30 == 0:
            out += d.message(hello01(), t)  # same boot: a repeat, not a start
        out += d.message(hb01(t, sshd="failed" if t >= 41 else "ok"), t)
    out += d.message(Failure(1, "sshd", "stopped"), 41.5)
    assert not notifies(out) and d.state is State.PAUSED
    [n] = notifies(beat(d, 611, 615, sshd="failed"))
    assert n.at == 611


def test_a_pause_level_is_clamped_to_max_pause_and_extends_or_shortens_exactly():
    d = connected(DetectorConfig(missed_heartbeats=3, max_pause=100))
    out = d.message(hb02(0, paused=pause(500)), 0)
    assert d.state is State.PAUSED
    [p] = pause_changes(out)
    assert (p.until, p.asked, p.source) == (100, 500, "heartbeat")
    d.message(hb02(1, paused=pause(20)), 10)  # the guest shortened it
    assert d.next_deadline() == 30
    out = d.message(hb02(2, paused=pause(50)), 20)  # and extended it
    assert d.next_deadline() == 70 and pause_changes(out)


def test_a_nil_pause_level_ends_a_pause_whose_resume_was_lost():
    d = connected()
    d.message(hello02(paused=pause(600)), 0)
    assert d.state is State.PAUSED
    out = d.message(hb02(1, paused=None), 15)
    assert d.state is State.ARMED and moves(out) == [(State.PAUSED, State.ARMED)]
    assert pause_changes(out)[0].until is None and persists(out)


def test_an_0_1_0_heartbeat_neither_starts_nor_ends_a_pause():
    d = armed()
    d.message(Pause(100), 5)
    beat(d, 6, 50)
    assert d.state is State.PAUSED and d.next_deadline() == 105


def test_a_pause_level_in_a_hello_applies_a_repeat_hello_without_level_changes_nothing():
    d = connected()
    d.message(hello02(paused=pause(100)), 0)
    assert d.state is State.PAUSED
    d.message(hello02(paused=pause(50)), 10)
    assert d.next_deadline() == 60
    d = armed()
    d.message(Pause(100), 5)
    d.message(hello01(), 6)
    assert d.state is State.PAUSED


def test_failure_during_a_pause_seen_at_a_relay_reading_late():
    d = connected()
    d.message(hello02(paused=pause(100)), 0)
    out = d.message(Failure(1, "sshd", "gone"), 50)
    assert not notifies(out) and suppressed(out, "paused")
    assert notifies(d.message(hb02(2, paused=None, sshd="failed"), 60))


# ---------------------------------------------------------------- durable writes


def test_plain_heartbeats_write_nothing():
    d = connected()
    d.message(hello02(), 0)
    out = beat(d, 1, 2000, make=hb02, sshd="ok")
    assert not persists(out)
    d.message(Pause(1000, "maintenance"), 2000)
    out = []
    for i in range(1, 500):  # the pause level read with up to 0.9 s of jitter
        t = 2000 + i + (0.9 if i % 3 == 0 else 0.0)
        out += d.message(hb02(i, paused=pause(1000 - i)), t)
    assert not persists(out) and not pause_changes(out)
    assert d.counters.persists == 2  # arming, the pause


def test_each_change_that_matters_is_written_once():
    d = connected(DetectorConfig(missed_heartbeats=3, cooldown=20, min_uptime=100))
    kinds = []
    for t, msg in [(0, hello02()), (10, hb02(1, interval=2.0)), (11, Failure(1, "sshd", "x")),
                   (12, hb02(3, interval=2.0, sshd="ok")), (22, hb02(4, paused=pause(50),
                                                                      interval=2.0))]:
        kinds.append(len(persists(d.message(msg, t))))
    kinds.append(len(persists(d.tick(32))))  # the cooldown ended at 31 (written at once)
    kinds.append(len(persists(d.message(hb02(5, interval=2.0), 45))))  # nil pause: resumed
    assert kinds == [1, 1, 1, 1, 1, 1, 1]
    rec = d.record()
    assert rec.incident is None and rec.cooldown_until is None and rec.pause_until is None
    assert rec.notified_at == (11,)


def test_recovered_frame_for_the_incident_is_written():
    d = armed()
    d.message(Failure(1, "sshd", "gone"), 5)
    out = d.message(Recovered(2, "sshd"), 6)
    assert persists(out)[0].record.incident is None


def test_notify_and_its_persist_come_from_one_call_in_that_order():
    d = armed()
    out = d.message(Failure(1, "sshd", "gone"), 5)
    kinds = [type(o).__name__ for o in out]
    assert kinds.index("Notify") < kinds.index("Persist")
    assert persists(out)[0].record.incident.notified is True


def test_cfg_is_shared():
    assert CFG.missed_heartbeats == 3


def test_a_pause_that_ended_while_failed_does_not_linger():
    d = armed02(DetectorConfig(missed_heartbeats=3, cooldown=10))
    d.message(Failure(1, "sshd", "gone"), 1)
    d.message(Pause(20, "x"), 2)  # noted during the cooldown, over at 22 while FAILED
    d.tick(100)
    d.message(Recovered(5, "sshd"), 100)  # recovered: ARMED, the old pause forgotten
    assert d.state is State.ARMED and d.record().pause_until is None
    out = beat(d, 101, 110, make=hb02, sshd="ok")
    assert not ignored(out) and not persists(out)


def test_failure_frames_naming_endless_checks_keep_the_checks_bounded():
    d = armed()
    for i in range(1000):
        d.message(Failure(i, f"c{i}", "x"), 1 + i * 0.001)
    assert len(d.status(2).checks) == 32


def test_a_guest_churning_its_start_id_gets_one_write_per_write_every():
    d = connected()
    d.message(hello02(), 0)
    out = []
    for i in range(600):  # a new start id ten times a second for a minute
        out += d.message(hb02(i, start=f"s{i}"), 1 + i / 10)
    assert 5 <= len(persists(out)) <= 7  # WRITE_EVERY = 10 s
    assert d.record().start_id == "s599"


def test_a_write_held_back_is_due_at_next_deadline_even_if_the_guest_falls_silent():
    d = connected()
    d.message(hello02(), 0)
    d.message(Goodbye("stop"), 2)  # armed -> not armed, 2 s after the last write
    assert d.state is State.DEPARTED and d.record().armed is False
    assert d.next_deadline() == 10.0
    [p] = persists(d.tick(10.0))
    assert p.record.armed is False and d.next_deadline() is None


def test_a_notification_is_never_held_back():
    d = connected()
    d.message(hello02(), 0)
    d.message(hello02(start="s2"), 1)  # a held-back change
    out = d.message(Failure(1, "sshd", "gone"), 2)
    assert notifies(out) and persists(out)[0].record.start_id == "s2"
