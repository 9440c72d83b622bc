"""Scans, watches and trackers together, on a fake process table and a fake clock."""

from __future__ import annotations

import subprocess
import time

from guest_agent.config import CheckConfig
from guest_agent.monitor import GRACE_RESCAN_INTERVAL, Monitor
from guest_agent.processes import ProcInfo, PsutilSource, read_pidfile
from guest_agent.reactor import Reactor
from guest_agent.watcher import POLL_INTERVAL, PidWatcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """A process table the test edits; counts scans."""

    def __init__(self) -> None:
        self.procs = {}
        self.scans = 0

    def add(self, pid, name, cmdline=(), ct=None):
        self.procs[pid] = ProcInfo(pid, ct if ct is not None else float(pid), name, tuple(cmdline))

    def scan(self, want_cmdline):
        self.scans += 1
        return list(self.procs.values())

    def lookup(self, pid):
        return self.procs.get(pid)

    def is_alive(self, identity):
        p = self.procs.get(identity[0])
        return p is not None and p.create_time == identity[1]


def make(checks, source, clock, rescan=5.0):
    events = []
    monitor = Monitor(
        checks,
        rescan,
        source,
        lambda on_exit: PidWatcher(source, on_exit, clock, None, use_pidfd=False),
        clock,
        lambda t: events.append(t) if (t.old, t.new) != ("starting", "ok") else None,
    )
    return monitor, events


def run_until(monitor, clock, t):
    """Advance the fake clock through every deadline up to ``t``."""
    while True:
        nxt = monitor.next_deadline()
        if nxt > t:
            clock.now = t
            monitor.on_timer(t)
            return
        clock.now = max(clock.now, nxt)
        monitor.on_timer(clock.now)


def test_exit_seen_by_polling_and_restart_found_by_quick_rescan():
    clock, src = FakeClock(), FakeSource()
    src.add(10, "nginx")
    check = CheckConfig("web", "process", "nginx", grace=2.0)
    monitor, events = make([check], src, clock)
    run_until(monitor, clock, 1000.0)
    assert monitor.trackers["web"].state == "ok"
    assert monitor.watcher.watching() == [(10, 10.0)]

    del src.procs[10]
    run_until(monitor, clock, 1000.0 + POLL_INTERVAL)
    assert monitor.trackers["web"].below_min and events == []
    src.add(11, "nginx")  # the service manager restarted it
    run_until(monitor, clock, 1001.0 + GRACE_RESCAN_INTERVAL)
    assert monitor.trackers["web"].state == "ok" and not monitor.trackers["web"].below_min
    run_until(monitor, clock, 1010.0)
    assert events == []  # never failed: the restart came within grace


def test_failure_after_grace_then_recovery_on_rescan():
    clock, src = FakeClock(), FakeSource()
    src.add(10, "nginx")
    monitor, events = make([CheckConfig("web", "process", "nginx", grace=1.0)], src, clock)
    run_until(monitor, clock, 1000.0)
    del src.procs[10]
    run_until(monitor, clock, 1003.0)
    assert [(e.new, e.reason) for e in events] == [("failed", "process nginx: pid 10 exited")]
    src.add(12, "nginx")
    run_until(monitor, clock, 1009.0)  # failed checks are rescanned every rescan_interval
    assert [e.new for e in events] == ["failed", "ok"]


def test_pid_reuse_is_not_the_same_process():
    clock, src = FakeClock(), FakeSource()
    src.add(10, "nginx", ct=1.0)
    monitor, events = make([CheckConfig("web", "process", "nginx", grace=0.0)], src, clock)
    run_until(monitor, clock, 1000.0)
    src.add(10, "bash", ct=2.0)  # pid 10 reused by something else
    run_until(monitor, clock, 1001.0)
    assert [e.new for e in events] == ["failed"]


def test_cmdline_regex_and_shared_process():
    clock, src = FakeClock(), FakeSource()
    src.add(10, "python3", ["python3", "-m", "myapp.server", "--port", "80"])
    src.add(11, "python3", ["python3", "other.py"])
    checks = [
        CheckConfig("app", "cmdline", r"-m myapp\.server"),
        CheckConfig("py", "process", "python3", min_count=2),
    ]
    monitor, events = make(checks, src, clock)
    run_until(monitor, clock, 1000.0)
    assert set(monitor.trackers["app"].members) == {(10, 10.0)}
    assert len(monitor.trackers["py"].members) == 2
    assert len(monitor.watcher.watching()) == 2  # pid 10 watched once for two checks
    scans = src.scans
    run_until(monitor, clock, 1004.9)
    assert src.scans == scans  # no rescans before rescan_interval when all is well


def test_reconfigure_keeps_unchanged_checks():
    clock, src = FakeClock(), FakeSource()
    src.add(10, "nginx")
    web = CheckConfig("web", "process", "nginx", grace=0.0)
    monitor, events = make([web, CheckConfig("db", "process", "pg", grace=0.0)], src, clock)
    run_until(monitor, clock, 1000.0)
    assert monitor.trackers["db"].state == "failed"
    since = monitor.trackers["web"].since
    changed = monitor.reconfigure([web, CheckConfig("db", "process", "nginx")], 5.0)
    assert changed == ["db"]
    assert monitor.trackers["web"].since == since
    run_until(monitor, clock, 1000.1)
    assert monitor.trackers["db"].state == "ok"
    monitor.reconfigure([], 5.0)
    assert monitor.watcher.watching() == []


def test_pidfile(tmp_path):
    clock, src = FakeClock(), FakeSource()
    pidfile = tmp_path / "x.pid"
    monitor, events = make([CheckConfig("x", "pidfile", str(pidfile), grace=0.0)], src, clock)
    run_until(monitor, clock, 1000.0)
    assert events[-1].reason == f"pidfile {pidfile}: no such file"
    pidfile.write_text("42\n")
    run_until(monitor, clock, 1006.0)
    assert monitor.trackers["x"].reason == f"pidfile {pidfile}: pid 42 is not running"
    src.add(42, "daemon")
    run_until(monitor, clock, 1012.0)
    assert monitor.trackers["x"].state == "ok"
    pidfile.write_text("garbage")
    assert read_pidfile(str(pidfile)) == (None, "does not hold a pid")


def test_pidfd_sees_a_real_exit_at_once(tmp_path):
    reactor = Reactor()
    exits = []
    source = PsutilSource()
    watcher = PidWatcher(source, exits.append, time.monotonic, reactor, use_pidfd=True)
    child = subprocess.Popen(["sleep", "1000"])
    try:
        info = source.lookup(child.pid)
        assert watcher.watch(info.identity)
        assert watcher.method == "pidfd"
        assert reactor.run_once(0.05) == 0
        child.kill()
        start = time.monotonic()
        reactor.run_once(2.0)
        assert exits == [info.identity]
        assert time.monotonic() - start < 0.5
        assert watcher.watching() == []
    finally:
        child.kill()
        child.wait()
    assert not watcher.watch(info.identity)  # gone: refused
    watcher.close()


def test_real_scan_finds_a_named_child(tmp_path, targets):
    child = targets.start("iimtest-scan")
    procs = PsutilSource().scan(want_cmdline=True)
    mine = [p for p in procs if p.pid == child.pid]
    assert mine and mine[0].name == "iimtest-scan"
    assert mine[0].cmdline[-1] == "1000"
    targets.kill(child)
    assert child.pid not in {p.pid for p in PsutilSource().scan(want_cmdline=False)}
