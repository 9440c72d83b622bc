"""The operator's pause (issue 13): HOST_PAUSE/HOST_RESUME, apart from the guest's pause.

Sans-I/O: time is numbers.  CFG: hang after 3 missed 1 s heartbeats, cooldown 300 s.
"""

from __future__ import annotations

import dataclasses

import pytest

from host_relay.detector import (
    DetectorConfig,
    DetectorRecord,
    DomainState,
    State,
)
from tests.host_relay.detector_testing import (
    CFG,
    armed,
    beat,
    hb02,
    hello02,
    ignored,
    notifies,
    pause,
    pause_changes,
    persists,
    restart,
    suppressed,
)


def armed02(now: float = 0.0, cfg: DetectorConfig = CFG):
    d = armed(cfg, now)
    d.message(hello02(), now)  # a 0.2 agent: every heartbeat carries its pause level
    assert d.state is State.ARMED
    return d


def test_host_pause_holds_failures_and_hangs_then_expires():
    d = armed02()
    out = d.host_pause(60.0, "draining host", 1.0)
    assert d.state is State.PAUSED
    [pc] = pause_changes(out)
    assert (pc.until, pc.reason, pc.origin, pc.source) == (61.0, "draining host", "host", "host")
    st = d.status(1.0)
    assert st.host_pause is not None and st.host_pause.origin == "host"
    assert st.host_pause.remaining == pytest.approx(60.0) and st.pause is None
    # A killed process during the pause: not notified.
    out = d.message(hb02(1, db="failed"), 2.0)
    assert not notifies(out) and suppressed(out, "paused")
    # Silence far longer than the hang time: not notified either.
    assert not notifies(d.tick(50.0))
    assert d.next_deadline() == 61.0
    out = d.tick(61.0)
    assert d.state is State.ARMED
    assert [(p.until, p.origin, p.source) for p in pause_changes(out)] == [
        (None, "host", "expired")]
    # Watching again: the timer starts at the pause's end.
    assert len(notifies(d.tick(64.0))) == 1


def test_a_guest_heartbeat_saying_not_paused_does_not_end_the_host_pause():
    d = armed02()
    d.host_pause(100.0, "fixing it", 1.0)
    out = beat(d, 2.0, 20.0, make=lambda seq: hb02(seq, paused=None))
    assert d.state is State.PAUSED and not pause_changes(out)
    assert d.status(20.0).host_pause is not None


def test_host_resume_leaves_the_guest_pause_and_guest_resume_leaves_the_host_pause():
    d = armed02()
    d.message(hb02(1, paused=pause(100.0, "guest upgrade")), 1.0)
    d.host_pause(200.0, "host drain", 2.0)
    out = d.host_resume(3.0)
    assert [p.origin for p in pause_changes(out)] == ["host"]
    assert d.state is State.PAUSED
    st = d.status(3.0)
    assert st.host_pause is None and st.pause is not None and st.pause.origin == "guest"
    # And the other way round.
    d.host_pause(200.0, "host drain", 4.0)
    out = d.message(hb02(2, paused=None), 5.0)
    assert [p.origin for p in pause_changes(out)] == ["guest"]
    assert d.state is State.PAUSED and d.status(5.0).pause is None
    out = d.host_resume(6.0)
    assert d.state is State.ARMED


def test_the_earlier_pause_expiring_leaves_the_later_one():
    d = armed02()
    d.message(hb02(1, paused=pause(10.0)), 1.0)
    d.host_pause(30.0, "drain", 1.0)
    assert d.next_deadline() == 11.0

    def guest(seq):  # its own pause counts down, then it says "not paused"
        left = 11.0 - (2.0 + seq)
        return hb02(seq, paused=pause(left) if left > 0 else None)

    out = beat(d, 2.0, 20.0, make=guest)
    assert d.state is State.PAUSED
    assert d.next_deadline() == 31.0
    assert [p.origin for p in pause_changes(out) if p.until is None] == ["guest"]


def test_resume_with_a_check_still_failed_notifies_once():
    d = armed02()
    d.host_pause(60.0, "fixing", 1.0)
    out = beat(d, 2.0, 5.0, make=lambda seq: hb02(seq, db="failed"))
    assert not notifies(out)
    out = d.host_resume(5.5)
    assert d.state is State.ARMED and not notifies(out)
    out = beat(d, 6.0, 10.0, make=lambda seq: hb02(10 + seq, db="failed"))
    assert len(notifies(out)) == 1 and notifies(out)[0].check == "db"


def test_host_resume_without_a_host_pause_is_ignored():
    d = armed02()
    out = d.host_resume(1.0)
    assert ignored(out, "not_paused") and not pause_changes(out) and d.state is State.ARMED


def test_host_pause_is_written_at_once_even_right_after_another_write():
    d = armed02()
    d.message(hb02(1, paused=pause(5.0)), 1.0)  # a guest change written at 1.0
    out = d.host_pause(60.0, "drain", 1.5)  # well inside WRITE_EVERY
    [p] = persists(out)
    assert p.record.host_pause_until == 61.5 and p.record.host_pause_reason == "drain"
    out = d.host_resume(2.0)
    [p] = persists(out)
    assert p.record.host_pause_until is None


def test_host_pause_is_bounded_by_max_pause():
    cfg = DetectorConfig(missed_heartbeats=3, max_pause=100.0)
    d = armed02(cfg=cfg)
    out = d.host_pause(500.0, "too long", 1.0)
    [pc] = pause_changes(out)
    assert pc.until == 101.0 and pc.asked == 500.0


@pytest.mark.parametrize("downtime", [5.0, 50.0])
def test_host_pause_survives_a_restart(downtime):
    d = armed02()
    d.host_pause(40.0, "drain", 1.0)
    new = restart(d, 1.0 + downtime)
    new.message(hello02(), 1.0 + downtime)
    new.message(hb02(1, paused=None, db="failed"), 1.0 + downtime)
    if downtime < 40.0:
        assert new.state is State.PAUSED
        assert new.status(1.0 + downtime).host_pause.reason == "drain"
        assert new.next_deadline() == 41.0
    else:  # it ended while the relay was down: the failure notifies
        assert new.state is State.COOLDOWN and new.status(51.0).host_pause is None


def test_a_restored_host_pause_is_bounded_by_max_pause():
    d = armed02()
    d.host_pause(40.0, "drain", 1.0)
    rec = dataclasses.replace(d.record(), host_pause_until=1e9)
    cfg = DetectorConfig(missed_heartbeats=3, max_pause=100.0)
    from host_relay.detector import Detector

    new = Detector(cfg, 10.0, restored=rec)
    assert new.record().host_pause_until == 110.0


def test_domain_stop_and_a_new_agent_start_keep_the_host_pause():
    d = armed02()
    d.host_pause(100.0, "replacing a disk", 1.0)
    d.domain_state(DomainState.SHUTOFF, 2.0)
    assert d.state is State.UNKNOWN
    d.domain_state(DomainState.RUNNING, 10.0)
    out = d.message(hello02(start="start-2"), 11.0)
    out += d.message(hb02(1, start="start-2", db="failed"), 11.5)
    assert d.state is State.PAUSED and not notifies(out)


def test_record_json_carries_the_host_pause_and_rejects_bad_values():
    rec = DetectorRecord(host_pause_until=12.5, host_pause_reason="drain")
    again = DetectorRecord.from_json(rec.shifted(100.0).to_json()).shifted(-100.0)
    assert again == rec
    with pytest.raises(ValueError, match="host_pause_until"):
        DetectorRecord.from_json({**rec.to_json(), "host_pause_until": "soon"})
    with pytest.raises(ValueError, match="host_pause_reason"):
        DetectorRecord.from_json({**rec.to_json(), "host_pause_reason": "\x00"})
    old = rec.to_json()
    del old["host_pause_until"], old["host_pause_reason"]  # written by an older relay
    assert DetectorRecord.from_json(old).host_pause_until is None


def test_an_instance_gone_while_the_host_pause_holds_is_not_forgotten():
    from host_relay.instances import InstanceTable

    table = InstanceTable(forget_after=100.0)
    d = armed02()
    d.host_pause(500.0, "replacing a disk", 1.0)
    paused, plain = table.ensure("a", 0.0), table.ensure("b", 0.0)
    paused.detector, plain.detector = d, armed02()
    assert [i.uuid for i in table.expired(200.0)] == ["b"]
    assert table.expired(400.0) == [] and "a" in table
    assert [i.uuid for i in table.expired(502.0)] == ["a"]
    # A stored record waiting for its instance counts the same.
    table.ensure("c", 0.0).restored = DetectorRecord(host_pause_until=1000.0)
    assert table.expired(900.0) == [] and [i.uuid for i in table.expired(1001.0)] == ["c"]
