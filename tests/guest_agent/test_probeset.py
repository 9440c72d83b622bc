"""The probe set on a real reactor, without the agent: exec users, schedules, reloads."""

from __future__ import annotations

import os
import time

import pytest

from guest_agent.checks import FAILED, OK
from guest_agent.config import CheckConfig
from guest_agent.probes.probeset import ProbeSet
from guest_agent.reactor import Reactor


def run(probes: ProbeSet, reactor: Reactor, until, timeout: float = 5.0) -> None:
    """Drive the loop as the agent does until ``until()`` holds (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not until():
        now = time.monotonic()
        assert now < deadline, {n: (t.state, t.reason) for n, t in probes.trackers.items()}
        probes.on_timer(now)
        nxt = probes.next_deadline()
        wait = 0.05 if nxt is None else max(0.0, min(nxt, deadline) - time.monotonic())
        reactor.run_once(min(wait, 0.05))


@pytest.fixture
def probes():
    reactor = Reactor()
    events = []
    ps = ProbeSet(reactor, time.monotonic, events.append)
    ps.events = events
    ps.reactor = reactor
    yield ps
    ps.close()


def exec_check(name, argv, **kw):
    kw.setdefault("period", 0.3)
    kw.setdefault("timeout", 0.2)
    kw.setdefault("failures", 1)
    return CheckConfig(name, "exec", " ".join(argv), argv=tuple(argv), **kw)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_exec_runs_as_its_user(probes, tmp_path):
    probes.reconfigure([
        # Three processes and a user switch each: a busy machine may take over 0.2 s.
        exec_check("nobody", ["/bin/sh", "-c", 'test "$(id -u)" = "$(id -u nobody)"'],
                   user="nobody", timeout=2.0, period=3.0),
        exec_check("root", ["/bin/sh", "-c", 'test "$(id -u)" = 0'], timeout=2.0, period=3.0),
        exec_check("ghost", ["/bin/true"], user="no-such-user-iim"),
    ], str(tmp_path / "n.sock"))
    t = probes.trackers
    run(probes, probes.reactor, lambda: all(x.state != "starting" for x in t.values()))
    assert t["nobody"].state == OK and t["root"].state == OK
    assert t["ghost"].state == FAILED
    assert t["ghost"].reason == "user no-such-user-iim does not exist"


def test_missing_program_and_signals(probes, tmp_path):
    probes.reconfigure([
        exec_check("missing", ["/nonexistent/probe"]),
        exec_check("killed", ["/bin/sh", "-c", "kill -TERM $$"], timeout=2.0, period=3.0),
    ], str(tmp_path / "n.sock"))
    t = probes.trackers
    run(probes, probes.reactor, lambda: all(x.state == FAILED for x in t.values()))
    assert t["missing"].reason == "cannot run /nonexistent/probe: No such file or directory"
    assert t["killed"].reason == "killed by SIGTERM"


def test_schedule_counts_from_the_first_probe(probes, tmp_path):
    """A slow probe does not shift the next ones; start_delay holds the first back."""
    check = exec_check("slow", ["/bin/sleep", "0.15"], start_delay=0.2, failures=3)
    probes.reconfigure([check], str(tmp_path / "n.sock"))
    slot = probes.slots["slow"]
    first = slot.next_start
    t0 = time.monotonic()
    run(probes, probes.reactor, lambda: probes.trackers["slow"].probes >= 3)
    assert time.monotonic() - t0 >= 0.2 + 2 * 0.3
    assert abs(slot.next_start - (first + 3 * 0.3)) < 1e-6  # 3 periods from the first
    assert probes.trackers["slow"].state == OK


def test_reload_cancels_a_running_probe_without_a_result(probes, tmp_path):
    hang = exec_check("hang", ["/bin/sleep", "30"], period=5, timeout=4)
    probes.reconfigure([hang], str(tmp_path / "n.sock"))
    run(probes, probes.reactor, lambda: probes.slots["hang"].attempt is not None)
    pid = probes.slots["hang"].attempt.proc.pid
    probes.reconfigure([], str(tmp_path / "n.sock"))
    assert probes.events == [] and probes.trackers == {}
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline, "the cancelled probe was not killed"
        probes.reactor.run_once(0.05)  # its pidfd: reaped by the loop


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
