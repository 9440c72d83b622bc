"""The detector across relay restarts: its record, restored (issue 9 cases 2 and 3).

``restart()`` stores the record as the relay does (wall clock, JSON) and
builds a new detector from it; a kill -9 restores the last ``Persist``, a
SIGTERM may store ``record()`` at exit.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_relay.detector import (
    Detector,
    DetectorConfig,
    DetectorRecord,
    Incident,
    IncidentClosed,
    State,
)
from iim_protocol.messages import Failure, Pause
from tests.host_relay.detector_testing import (
    CFG,
    beat,
    connected,
    hb01,
    hb02,
    hello01,
    hello02,
    notifies,
    pause,
    persists,
    restart,
    suppressed,
)

FULL = DetectorRecord(
    armed=True, interval=2.0, boot_id="boot-1", start_id="start-1", last_heard=100.5,
    incident=Incident("process_failure", "sshd", "check sshd failed: gone", 90.0, True),
    cooldown_until=390.0, notified_at=(10.0, 90.0), pause_until=700.0,
    pause_reason="upgrade", pause_origin="guest",
)


def armed02(cfg: DetectorConfig = CFG, now: float = 0.0) -> Detector:
    d = connected(cfg, now)
    d.message(hello02(), now)
    return d


def last_persisted(outs: list) -> DetectorRecord:
    return persists(outs)[-1].record


# ---------------------------------------------------------------- the record


def test_record_round_trips_through_json_and_clocks():
    text = json.dumps(FULL.to_json())
    assert json.loads(text)["v"] == 1
    assert DetectorRecord.from_json(json.loads(text)) == FULL
    assert FULL.shifted(1000.0).shifted(-1000.0) == FULL
    moved = FULL.shifted(1000.0)
    assert (moved.last_heard, moved.incident.since, moved.cooldown_until, moved.notified_at,
            moved.pause_until) == (1100.5, 1090.0, 1390.0, (1010.0, 1090.0), 1700.0)
    assert DetectorRecord().shifted(5.0) == DetectorRecord()


def test_unknown_keys_are_ignored():
    d = FULL.to_json()
    d["future"] = {"x": 1}
    d["incident"]["also_future"] = 2
    assert DetectorRecord.from_json(d) == FULL


def _bad(**change):
    d = FULL.to_json()
    for key, value in change.items():
        if key.startswith("incident_"):
            d["incident"][key[len("incident_"):]] = value
        else:
            d[key] = value
    return d


@pytest.mark.parametrize("data", [
    None, [], "record", 1,
    {},  # no version
    _bad(v=2), _bad(v=True), _bad(v="1"),
    _bad(armed="yes"), _bad(armed=1),
    _bad(interval=0.0), _bad(interval=1e9), _bad(interval="2"), _bad(interval=float("nan")),
    _bad(last_heard=float("inf")), _bad(last_heard=10**400), _bad(cooldown_until=[1]),
    _bad(boot_id=7), _bad(boot_id="x" * 65), _bad(start_id="a\nb"),
    _bad(incident=[1]), _bad(incident_kind="reboot"), _bad(incident_check="c" * 65),
    _bad(incident_reason="\x1b[31mred"), _bad(incident_since=None), _bad(incident_notified=0),
    _bad(notified_at={"a": 1}), _bad(notified_at=[1.0, "2"]), _bad(notified_at=[0.0] * 1001),
    _bad(pause_until=True), _bad(pause_reason=None), _bad(pause_origin="root"),
])
def test_hostile_records_raise_value_error(data):
    with pytest.raises(ValueError):
        DetectorRecord.from_json(data)


@pytest.mark.parametrize("text", ['{"v": 1, "armed": tr', "", "\x00\x01", '{"v": 1,}'])
def test_garbled_json_is_a_value_error(text):
    with pytest.raises(ValueError):
        DetectorRecord.from_json(json.loads(text))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=6),
    max_leaves=30,
)
FIELDS = st.fixed_dictionaries({"v": st.just(1)}, optional={
    k: JSONISH for k in ("armed", "interval", "boot_id", "start_id", "last_heard", "incident",
                         "cooldown_until", "notified_at", "pause_until", "pause_reason",
                         "pause_origin")})


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSONISH, FIELDS))
def test_any_json_gives_a_record_or_a_value_error(data):
    try:
        rec = DetectorRecord.from_json(data)
    except ValueError:
        return
    assert DetectorRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    Detector(CFG, 0.0, restored=rec).tick(1.0)  # and a detector can live with it


# ---------------------------------------------------------------- issue 9 case 3: cooldown


def test_issue9_case3_restart_inside_the_cooldown_does_not_notify_again():
    d = armed02()
    beat(d, 1, 20, make=hb02, sshd="ok")
    out = d.message(Failure(1, "sshd", "gone"), 20)  # -> the 202 from Masakari
    assert len(notifies(out)) == 1
    d2 = restart(d, 210.0)  # 190 s later; the agent re-sends its state on reconnect
    out = d2.message(hello02(), 210) + d2.message(hb02(1, sshd="failed"), 210)
    out += d2.message(Failure(2, "sshd", "gone"), 210)
    assert not notifies(out)  # main's detector: a second 202
    assert d2.state is State.COOLDOWN and suppressed(out, "cooldown")
    out = beat(d2, 211, 400, make=hb02, sshd="failed")
    assert not notifies(out)
    assert d2.state is State.FAILED  # cooldown over, the check still failed: no repeat


def test_issue9_case3_with_an_0_1_0_agent_and_the_last_persisted_record():
    d = connected()
    outs = d.message(hello01(), 0) + beat(d, 1, 20)
    outs += d.message(Failure(1, "sshd", "gone"), 20)
    outs += beat(d, 21, 200, sshd="failed")  # kill -9: only what was persisted counts
    d2 = Detector(CFG, 210.0, restored=last_persisted(outs))
    d2.channel_connected(210)
    out = d2.message(hello01(), 210) + d2.message(Failure(2, "sshd", "gone"), 210.1)
    assert not notifies(out) and d2.state is State.COOLDOWN


def test_storm_cap_counts_across_restarts():
    cfg = DetectorConfig(missed_heartbeats=3, cooldown=10, max_notifications=3,
                         notification_window=3600, min_uptime=0)
    d, sent, now = armed02(cfg), [], 0.0
    for i in range(4):
        now += 100
        d = restart(d, now, cfg)
        d.message(hb02(i, boot=f"boot-{i + 2}"), now)  # Masakari restarted the VM: a new boot
        sent += notifies(d.message(Failure(i, "sshd", "gone"), now + 1))
    assert [n.at for n in sent] == [101, 201, 301]
    assert d.state is State.FAILED and d.record().incident.notified is False


def test_a_restored_cooldown_that_ended_during_the_downtime_leaves_the_incident_open():
    d = armed02()
    d.message(Failure(1, "sshd", "gone"), 5)
    d2 = restart(d, 1000.0)
    assert d2.state is State.FAILED
    out = d2.message(hb02(1, sshd="ok"), 1001)
    assert [type(o) for o in out if isinstance(o, IncidentClosed)] and d2.state is State.ARMED


# ---------------------------------------------------------------- issue 9 case 2: hangs


@pytest.mark.parametrize("stop", ["sigterm", "kill -9"])
def test_issue9_case2_a_hang_across_a_restart_is_reported(stop):
    d = connected()
    outs = d.message(hello02(), 0) + beat(d, 1, 15, make=hb02)  # hangs at 15
    rec = d.record() if stop == "sigterm" else last_persisted(outs)
    d2 = Detector(CFG, 17.0, restored=rec)  # relay back 2 s later: nothing heard since
    d2.channel_connected(17.0)
    assert not notifies(d2.tick(19.5))
    [n] = notifies(d2.tick(20.0))  # missed_heartbeats x interval after the restore
    assert (n.kind, n.at) == ("guest_hang", 20.0)
    assert d2.state is State.COOLDOWN


def test_a_guest_that_hangs_while_the_relay_is_down_is_reported():
    d = armed02()
    beat(d, 1, 20, make=hb02)
    d2 = restart(d, 500.0)  # it hung at 30; the relay came back at 500
    assert not notifies(d2.tick(502.9))
    assert notifies(d2.tick(503.0))


def test_a_restart_never_causes_a_false_hang():
    d = armed02()
    beat(d, 1, 20, make=hb02)
    d2 = restart(d, 5000.0)  # down far longer than the hang time
    out = d2.tick(5000.0) + beat(d2, 5000.5, 6000, make=hb02)
    assert not notifies(out) and d2.state is State.ARMED


def test_a_restored_detector_waits_for_its_channel():
    d = armed02()
    beat(d, 1, 20, make=hb02)
    d2 = Detector(CFG, 30.0, restored=d.record())
    assert d2.next_deadline() is None  # no channel yet: nothing to hear
    d2.channel_connected(90.0)
    assert d2.next_deadline() == 92.0


def test_a_hang_incident_restored_ends_when_the_guest_speaks():
    d = armed02()
    assert notifies(d.tick(10))
    d2 = restart(d, 1000.0)
    assert d2.state is State.FAILED
    assert not notifies(d2.tick(5000))
    d2.message(hb02(1), 5001)
    assert d2.state is State.ARMED and d2.record().incident is None


def test_a_departed_agent_is_not_watched_after_a_restart():
    from iim_protocol.messages import Goodbye

    d = armed02()
    d.message(Goodbye("stop"), 5)
    d2 = restart(d, 100.0)
    assert d2.state is State.UNKNOWN and not notifies(d2.tick(100_000))


def test_a_restored_detector_writes_nothing_until_something_changes():
    d = armed02()
    d.message(Failure(1, "sshd", "gone"), 5)
    d2 = restart(d, 50.0)
    out = d2.message(hello02(), 50) + beat(d2, 51, 100, make=hb02, sshd="failed")
    assert not persists(out)


def test_restore_applies_this_relay_s_limits():
    rec = DetectorRecord(armed=True, interval=60.0, boot_id="b", pause_until=10_000.0,
                         pause_reason="long", pause_origin="guest")
    d = Detector(DetectorConfig(missed_heartbeats=3, max_pause=100), 0.0, restored=rec)
    assert d.status(0).interval == 10.0 and d.status(0).pause.remaining == 100.0


# ---------------------------------------------------------------- pauses


def test_a_guest_pause_holds_across_a_restart():
    d = armed02()
    beat(d, 1, 9, make=hb02)
    d.message(Pause(600, "upgrade"), 10)
    d2 = restart(d, 100.0)
    assert d2.state is State.PAUSED and d2.next_deadline() == 610
    out = d2.message(Failure(1, "sshd", "stopped for maintenance"), 200)
    out += beat(d2, 201, 609, make=hb01, sshd="failed")  # a 0.1.0-style reader: no level
    assert not notifies(out)
    [n] = notifies(d2.tick(610) + d2.message(hb01(1, sshd="failed"), 610.5))
    assert n.check == "sshd"


def test_a_pause_level_after_a_restart_is_authoritative():
    d = connected()
    d.message(hello02(paused=pause(600)), 0)
    d2 = restart(d, 100.0)
    d2.message(hb02(1, paused=None), 101)  # resumed while the relay was down
    assert d2.state is State.ARMED


def test_a_pause_that_ended_during_the_downtime_is_over():
    d = armed02()
    beat(d, 1, 9, make=hb02)
    d.message(Pause(60, "short"), 10)
    d2 = restart(d, 100.0)
    assert d2.state is State.ARMED and d2.status(100).pause is None


def test_restore_keeps_the_exact_times():
    d = armed02()
    d.message(Failure(1, "sshd", "gone"), 5)
    d2 = restart(d, 50.0)
    assert math.isclose(d2.status(50).cooldown_remaining, 255.0)


def test_a_domain_found_stopped_at_the_restore_is_not_watched_until_its_agent_starts():
    from host_relay.detector import DomainState

    d = armed02()
    beat(d, 1, 20, make=hb02)
    d2 = restart(d, 100.0, domain=DomainState.SHUTOFF)
    assert d2.state is State.UNKNOWN and not d2.record().armed
    d2.domain_state(DomainState.RUNNING, 200)  # booting: the agent is not up yet
    assert not notifies(d2.tick(1000))
    d2.message(hello02(boot="boot-2"), 1000)
    assert d2.state is State.ARMED
