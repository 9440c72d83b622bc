"""The check state machine with a fake clock: no processes, no I/O."""

from __future__ import annotations

from guest_agent.checks import FAILED, OK, STARTING, CheckTracker
from guest_agent.config import CheckConfig

A, B, C = (100, 1.0), (200, 2.0), (300, 3.0)


def tracker(grace=2.0, min_count=1, now=0.0):
    return CheckTracker(CheckConfig("web", "process", "nginx", min_count, grace), now)


def test_starts_ok_when_found():
    t = tracker()
    assert t.state == STARTING
    tr = t.observe({A: "nginx"}, "", 0.1)
    assert (tr.old, tr.new) == (STARTING, OK)
    assert t.deadline() is None


def test_never_comes_up_fails_after_grace():
    t = tracker(grace=2.0, now=10.0)
    assert t.observe({}, "no process matches", 10.0) is None
    assert t.deadline() == 12.0
    assert t.tick(11.9) is None
    tr = t.tick(12.0)
    assert (tr.old, tr.new, tr.reason) == (STARTING, FAILED, "process nginx: no process matches")
    assert t.tick(20.0) is None  # failing once is enough


def test_exit_then_grace_then_failure_then_recovery():
    t = tracker(grace=2.0)
    t.observe({A: "nginx"}, "", 0.0)
    assert t.exited(A, 5.0) is None
    assert t.state == OK and t.deadline() == 7.0
    assert t.reason == "process nginx: pid 100 exited"
    assert t.observe({}, "no process matches", 6.0) is None
    tr = t.tick(7.0)
    assert tr.new == FAILED and tr.reason == "process nginx: pid 100 exited"
    tr = t.observe({B: "nginx"}, "", 9.0)
    assert (tr.old, tr.new) == (FAILED, OK)
    assert t.since == 9.0 and t.reason == ""


def test_restart_within_grace_is_silent():
    t = tracker(grace=2.0)
    t.observe({A: "nginx"}, "", 0.0)
    t.exited(A, 1.0)
    assert t.observe({B: "nginx"}, "", 1.5) is None
    assert t.tick(10.0) is None
    assert t.state == OK and not t.below_min


def test_grace_zero_fails_at_once():
    t = tracker(grace=0.0)
    t.observe({A: "nginx"}, "", 0.0)
    tr = t.exited(A, 1.0)
    assert tr.new == FAILED and tr.reason == "process nginx: pid 100 exited"


def test_min_count():
    t = tracker(grace=0.0, min_count=2)
    assert t.observe({A: "nginx"}, "", 0.0).new == FAILED
    assert t.reason == "process nginx: 1 of 2 running"
    assert t.observe({A: "nginx", B: "nginx"}, "", 1.0).new == OK
    tr = t.exited(B, 2.0)
    assert tr.reason == "process nginx: pid 200 exited (1 of 2 running)"


def test_unknown_exit_and_vanished_member():
    t = tracker(grace=0.0)
    t.observe({A: "nginx"}, "", 0.0)
    assert t.exited(C, 1.0) is None
    tr = t.observe({}, "no process matches", 2.0)
    assert tr.reason == "process nginx: pid 100 is gone"


def test_reason_fits_the_protocol():
    long = CheckConfig("x", "cmdline", "a" * 128, 1, 0)
    t = CheckTracker(long, 0.0)
    t.observe({}, "b" * 300, 0.0)
    assert len(t.reason.encode()) <= 256 and t.reason.endswith("...")
