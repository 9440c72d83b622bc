"""Probe checks in the real agent against real servers: a pty plays the host.

Each fault is made for real (SIGSTOP, a 500, a closed listener, an exec
that fails or hangs, a sender that stops, a stamp that ages) and the failure
frame must arrive within failures x period + timeout (+ 100 ms, + LOAD for a
busy CI machine) of it; ``recovered`` must follow once ``successes`` good probes have been seen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.guest_agent.conftest import REPO, agent_env, write_config
from tests.guest_agent.test_agent_e2e import cli

SERVERS = REPO / "tests" / "guest_agent" / "probe_servers.py"
SLACK = 0.1  # the bound: failures x period + timeout + 100 ms
# What this test's own clock may add under CI load (its wake-ups, the pty, a busy
# machine's scheduler).  The bound itself is measured without it by
# bench/agent_probes.py --part wedge (figures in docs/benchmarks.md); here the bound
# catches a schedule that is off by more than LOAD (a missed or doubled timeout, a
# failure counted a period late in the worst phase).
LOAD = 0.25
PERIOD, TIMEOUT, FAILURES, SUCCESSES = 0.3, 0.2, 2, 2
BOUND = FAILURES * PERIOD + TIMEOUT + SLACK + LOAD
TIMING = f"    period: {PERIOD}\n    timeout: {TIMEOUT}\n    failures: {FAILURES}\n" \
         f"    successes: {SUCCESSES}\n"


class Server:
    """A probe_servers.py child; ``port`` read from its first line."""

    def __init__(self, kind: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SERVERS), kind, *args],
                                     stdout=subprocess.PIPE, text=True, env=agent_env())
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def servers():
    started: list[Server] = []

    def make(kind: str, *args: str) -> Server:
        s = Server(kind, *args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def run_agent(tmp_path, host, agent_factory, sock_path, checks: str, extra: str = ""):
    host.open()
    notify = Path(f"{sock_path}.notify")
    extra = f"notify_socket: {notify}\n{extra}"
    cfg = write_config(tmp_path / "agent.yaml", host.link, sock_path, checks, extra)
    return agent_factory(cfg), cfg, notify


def wait_state(host, name: str, state: str, timeout: float = 5.0) -> None:
    host.read_until(
        lambda ms: any(m.TYPE == "heartbeat" and dict(m.checks).get(name) == state for m in ms),
        timeout,
    )


def failure_within(host, name: str, since: float, bound: float = BOUND):
    failure = host.wait_for("failure", timeout=bound + 3.0, check=name)
    elapsed = time.monotonic() - since
    assert elapsed <= bound, f"failure after {elapsed:.3f} s, bound {bound:.3f} s"
    return failure


def recovered_after(host, name: str, since: float, successes: int = SUCCESSES) -> float:
    host.wait_for("recovered", timeout=5.0, check=name)
    elapsed = time.monotonic() - since
    # successes good probes are needed: the first can come at once (one already under way
    # when the fault ended, up to TIMEOUT before ``since``), the others a period apart
    assert elapsed >= (successes - 1) * PERIOD - TIMEOUT, elapsed
    return elapsed


def test_http_server_stopped_then_continued(tmp_path, host, agent_factory, sock_path, servers):
    web = servers("http", str(tmp_path / "code"))
    run_agent(tmp_path, host, agent_factory, sock_path,
              f"  - name: web\n    http: http://127.0.0.1:{web.port}/healthz\n" + TIMING)
    wait_state(host, "web", "ok")
    t0 = time.monotonic()
    web.signal(signal.SIGSTOP)  # the meltdown: the process is there, nothing answers
    failure = failure_within(host, "web", t0)
    assert failure.reason.startswith(f"timed out after {TIMEOUT:g} s")
    t1 = time.monotonic()
    web.signal(signal.SIGCONT)
    recovered_after(host, "web", t1)


def test_http_500_then_200(tmp_path, host, agent_factory, sock_path, servers):
    code = tmp_path / "code"
    web = servers("http", str(code))
    _, cfg, _ = run_agent(tmp_path, host, agent_factory, sock_path,
                          f"  - name: web\n    http: http://127.0.0.1:{web.port}/\n" + TIMING)
    wait_state(host, "web", "ok")
    t0 = time.monotonic()
    code.write_text("500")
    failure = failure_within(host, "web", t0)
    assert failure.reason.startswith("HTTP 500 in 0.") and failure.reason.endswith(
        f", {FAILURES} in a row"), failure.reason
    status = json.loads(cli("status", "--json", "-c", str(cfg)).stdout)
    (check,) = status["checks"]
    assert check["state"] == "failed" and check["reason"].startswith("HTTP 500")
    assert check["probe"]["probe"] == "http" and check["probe"]["last"].startswith("HTTP 500")
    text = cli("status", "-c", str(cfg)).stdout
    assert "web" in text and "http: HTTP 500" in text
    t1 = time.monotonic()
    code.write_text("204")
    recovered_after(host, "web", t1)


def test_http_status_list(tmp_path, host, agent_factory, sock_path, servers):
    code = tmp_path / "code"
    code.write_text("302")
    web = servers("http", str(code))
    run_agent(tmp_path, host, agent_factory, sock_path,
              f"  - name: web\n    http: http://127.0.0.1:{web.port}/\n    status: [200]\n"
              + TIMING)
    failure = host.wait_for("failure", timeout=3, check="web")
    assert failure.reason.startswith("HTTP 302")
    code.write_text("200")
    host.wait_for("recovered", timeout=3, check="web")


def test_tcp_listener_closed(tmp_path, host, agent_factory, sock_path, servers):
    db = servers("tcp")
    run_agent(tmp_path, host, agent_factory, sock_path,
              f"  - name: db\n    tcp: 127.0.0.1:{db.port}\n" + TIMING)
    wait_state(host, "db", "ok")
    t0 = time.monotonic()
    db.stop()  # the listener is closed
    failure = failure_within(host, "db", t0)
    assert failure.reason == f"connect refused, {FAILURES} in a row"


EXEC_SCRIPT = """\
#!/bin/sh
mode=$(cat "{mode}")
case "$mode" in
  fail) echo "first line" >&2; echo "queue has 5000 stuck jobs" >&2; exit 1 ;;
  hang) sleep {marker} & sleep {marker} ;;
  noisy) head -c 10000000 /dev/zero; exit 2 ;;
  *) exit 0 ;;
esac
"""


def group_members(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.slow
def test_exec_fails_hangs_and_recovers(tmp_path, host, agent_factory, sock_path):
    mode = tmp_path / "mode"
    mode.write_text("ok")
    script = tmp_path / "queue-ok"
    marker = str(100000 + os.getpid() % 100000)  # sleep's argument, unique to this run
    script.write_text(EXEC_SCRIPT.format(mode=mode, marker=marker))
    script.chmod(0o755)
    run_agent(tmp_path, host, agent_factory, sock_path,
              f"  - name: queue\n    exec: [{script}, --quick]\n" + TIMING)
    wait_state(host, "queue", "ok")

    t0 = time.monotonic()
    mode.write_text("fail")
    failure = failure_within(host, "queue", t0)
    assert failure.reason == f"exit 1: queue has 5000 stuck jobs, {FAILURES} in a row"
    mode.write_text("ok")
    recovered_after(host, "queue", time.monotonic())

    t0 = time.monotonic()
    mode.write_text("hang")
    failure = failure_within(host, "queue", t0)
    assert failure.reason.startswith(f"timed out after {TIMEOUT:g} s (pid ")
    mode.write_text("ok")
    recovered_after(host, "queue", time.monotonic())
    # Each hung run was killed with its whole process group at its timeout: neither the
    # shells nor their background sleeps are left.
    assert group_members(f"sleep {marker}") == []


def test_exec_output_is_bounded(tmp_path, host, agent_factory, sock_path):
    mode = tmp_path / "mode"
    mode.write_text("noisy")
    script = tmp_path / "noisy"
    script.write_text(EXEC_SCRIPT.format(mode=mode, marker=1))
    script.chmod(0o755)
    _, cfg, _ = run_agent(tmp_path, host, agent_factory, sock_path,
                          f"  - name: noisy\n    exec: [{script}]\n    period: 1\n"
                          "    timeout: 0.9\n    failures: 1\n")
    failure = host.wait_for("failure", timeout=5, check="noisy")
    # 10 MB of NULs on stdout: the reason is one clipped line, the agent stays small.
    assert failure.reason.startswith("exit 2")
    assert len(failure.reason.encode()) <= 256
    status = json.loads(cli("status", "--json", "-c", str(cfg)).stdout)
    assert status["checks"][0]["state"] == "failed"


def wait_exists(path: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def send(path: Path, text: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(text.encode(), str(path))


def test_heartbeat_sender_stops(tmp_path, host, agent_factory, sock_path):
    hb_timeout = 0.5
    _, cfg, notify = run_agent(
        tmp_path, host, agent_factory, sock_path,
        f"  - name: worker\n    heartbeat: worker\n    timeout: {hb_timeout}\n"
        "    start_delay: 2\n",
    )
    host.wait_for("heartbeat")
    wait_exists(notify)
    assert (notify.stat().st_mode & 0o777) == 0o600  # no `user:`: root only
    # sd_notify format, as an application sends it
    send(notify, "IIM_HEARTBEAT=worker\nWATCHDOG=1\nSTATUS=processed 12 jobs\n")
    wait_state(host, "worker", "ok")
    for _ in range(5):
        send(notify, "WATCHDOG=1\nIIM_HEARTBEAT=worker")
        time.sleep(0.1)
    t0 = time.monotonic()  # the sender stops
    failure = failure_within(host, "worker", t0, hb_timeout + SLACK + LOAD)
    assert failure.reason == "no heartbeat for 0.5 s (last STATUS: processed 12 jobs)"
    out = cli("beat", "worker", "-c", str(cfg), "--status", "back")
    assert out.returncode == 0, out.stderr
    host.wait_for("recovered", timeout=2, check="worker")
    out = cli("beat", "nope", "-c", str(cfg))
    assert out.returncode == 2 and "no heartbeat check `heartbeat: nope`" in out.stderr
    # the application says itself that it broke (a beat first: the CLI calls above may have
    # taken longer than the 0.5 s timeout)
    send(notify, "IIM_HEARTBEAT=worker\nWATCHDOG=1")
    send(notify, "IIM_HEARTBEAT=worker\nWATCHDOG=trigger")
    trigger = "the application reported a failure (WATCHDOG=trigger) (last STATUS: back)"
    host.read_until(lambda ms: any(m.TYPE == "failure" and m.reason == trigger for m in ms), 2)


def test_heartbeat_permissions_come_from_credentials(tmp_path, host, agent_factory, sock_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to send as another user")
    agent, cfg, notify = run_agent(
        tmp_path, host, agent_factory, sock_path,
        "  - name: mine\n    heartbeat: mine\n    timeout: 1\n    user: nobody\n"
        "  - name: roots\n    heartbeat: roots\n    timeout: 1\n",
    )
    host.wait_for("heartbeat")
    wait_exists(notify)
    assert (notify.stat().st_mode & 0o777) == 0o622  # a user may send; credentials decide

    def send_as_nobody(text: str) -> None:
        code = (f"import socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
                f"s.sendto({text!r}.encode(), {str(notify)!r})")
        # a system python: nobody may not enter the directories of the test's virtualenv
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        subprocess.run([python, "-c", code], user="nobody", check=True, timeout=10, cwd="/")

    # unmodified sd_notify sender: no name, found by its uid
    send_as_nobody("WATCHDOG=1")
    wait_state(host, "mine", "ok")
    # nobody naming the root-only check, and claiming to be root in the text: refused
    send_as_nobody("IIM_HEARTBEAT=roots\nWATCHDOG=1\nUID=0")
    deadline = time.monotonic() + 5
    while "refused: permission denied" not in agent.log():
        assert time.monotonic() < deadline, agent.log()
        time.sleep(0.05)

    # "roots" fails 1 s after the start; on a slow machine that frame may already have
    # been read (and passed over) while waiting for "mine" above: look at all seen.
    def roots_failure():
        return next((m for m in host.seen if m.TYPE == "failure" and m.check == "roots"), None)
    host.read_until(lambda _: roots_failure() is not None, 3)
    failure = roots_failure()
    assert failure.reason.startswith("no heartbeat since the check started")
    status = json.loads(cli("status", "--json", "-c", str(cfg)).stdout)
    states = {c["name"]: c["state"] for c in status["checks"]}
    assert states["roots"] == "failed"
    assert "refused: permission denied" in agent.log()


def test_a_second_agent_leaves_the_heartbeat_socket_alone(
    tmp_path, host, agent_factory, sock_path
):
    """A mistaken second `iim-agent run` exits on the control socket before it binds anything."""
    first, cfg, notify = run_agent(tmp_path, host, agent_factory, sock_path,
                                   "  - name: worker\n    heartbeat: worker\n    timeout: 2\n")
    host.wait_for("heartbeat")
    wait_exists(notify)
    inode = notify.stat().st_ino
    second = agent_factory(cfg)
    assert second.wait(10) == 1
    assert "another iim-agent is running" in second.log()
    assert notify.stat().st_ino == inode  # still the first agent's socket
    assert cli("beat", "worker", "-c", str(cfg)).returncode == 0
    wait_state(host, "worker", "ok")
    assert first.proc.poll() is None


def test_stamp_file_ages(tmp_path, host, agent_factory, sock_path):
    stamp = tmp_path / "stamp"
    stamp.touch()
    max_age = 0.6
    run_agent(tmp_path, host, agent_factory, sock_path,
              f"  - name: batch\n    file: {stamp}\n    max_age: {max_age}\n"
              f"    period: {PERIOD}\n    timeout: {TIMEOUT}\n")
    deadline = time.monotonic() + 10
    while True:  # the agent may start slower than max_age: keep the stamp fresh until ok
        stamp.touch()
        try:
            wait_state(host, "batch", "ok", timeout=0.2)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "the stamp check never became ok"
    stamp.touch()
    t0 = time.monotonic()  # the last touch: the stamp is too old from t0 + max_age on
    failure = failure_within(host, "batch", t0, max_age + TIMEOUT + SLACK + LOAD)
    # secs() gives two significant digits: 0.6, 0.61 ... 0.99 (a late check reads later)
    assert re.fullmatch(r"modified 0\.[6-9]\d? s ago \(max_age 0\.6 s\)", failure.reason), \
        failure.reason
    assert time.monotonic() - t0 >= max_age - 0.02  # mtimes come from a coarse clock
    stamp.touch()
    host.wait_for("recovered", timeout=PERIOD + TIMEOUT + 1, check="batch")
    stamp.unlink()
    failure = host.wait_for("failure", timeout=3, check="batch")
    assert failure.reason.startswith(f"cannot stat {stamp}: No such file")


def test_target_that_never_came_up(tmp_path, host, agent_factory, sock_path):
    """start_delay + failures x period, as a process that never came up fails after grace."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start_delay = 0.5
    t0 = time.monotonic()
    run_agent(tmp_path, host, agent_factory, sock_path,
              f"  - name: web\n    http: http://127.0.0.1:{port}/\n    start_delay: {start_delay}\n"
              + TIMING)
    beat = host.wait_for("heartbeat")
    assert dict(beat.checks) == {"web": "starting"}
    failure = host.wait_for("failure", timeout=5, check="web")
    elapsed = time.monotonic() - t0  # includes the agent's start (~0.3 s of imports)
    assert elapsed >= start_delay + (FAILURES - 1) * PERIOD
    assert elapsed <= 1.5 + start_delay + FAILURES * PERIOD
    assert failure.reason == f"connect refused, {FAILURES} in a row"


@pytest.mark.slow
def test_reload_adds_removes_and_changes_probes_without_false_failure(
    tmp_path, host, agent_factory, sock_path, servers
):
    web = servers("http", str(tmp_path / "code"))
    db = servers("tcp")
    web_check = f"  - name: web\n    http: http://127.0.0.1:{web.port}/\n" + TIMING
    agent, cfg, _ = run_agent(tmp_path, host, agent_factory, sock_path, web_check)
    wait_state(host, "web", "ok")
    extra = f"notify_socket: {sock_path}.notify\n"

    # add a tcp probe, change the http one (a new period): nobody fails on the way
    changed = web_check.replace(f"period: {PERIOD}", "period: 0.4")
    write_config(cfg, host.link, sock_path,
                 changed + f"  - name: db\n    tcp: 127.0.0.1:{db.port}\n" + TIMING, extra)
    agent.signal(signal.SIGHUP)
    host.wait_for("hello", checks=("web", "db"))
    got = host.read_until(lambda ms: any(
        m.TYPE == "heartbeat" and dict(m.checks) == {"web": "ok", "db": "ok"} for m in ms))
    # remove the http probe: its server may die now without a word
    write_config(cfg, host.link, sock_path,
                 f"  - name: db\n    tcp: 127.0.0.1:{db.port}\n" + TIMING, extra)
    agent.signal(signal.SIGHUP)
    host.wait_for("hello", checks=("db",))
    web.stop()
    got += host.read_until(lambda ms: sum(m.TYPE == "heartbeat" for m in ms) >= 10)
    assert [m for m in got if m.TYPE == "failure"] == []
    status = json.loads(cli("status", "--json", "-c", str(cfg)).stdout)
    assert [(c["name"], c["state"]) for c in status["checks"]] == [("db", "ok")]
    assert status["agent"]["reloads"] == 2


def test_probes_follow_pause_and_resume(tmp_path, host, agent_factory, sock_path, servers):
    code = tmp_path / "code"
    web = servers("http", str(code))
    _, cfg, _ = run_agent(tmp_path, host, agent_factory, sock_path,
                          f"  - name: web\n    http: http://127.0.0.1:{web.port}/\n" + TIMING)
    wait_state(host, "web", "ok")
    assert cli("pause", "-c", str(cfg), "--for", "1m", "--reason", "db upgrade").returncode == 0
    host.wait_for("pause")
    # the agent keeps probing and reporting; the host holds notifications back
    code.write_text("503")
    failure = host.wait_for("failure", timeout=3, check="web")
    assert failure.reason.startswith("HTTP 503")
    assert cli("resume", "-c", str(cfg)).returncode == 0
    got = host.read_until(lambda ms: any(m.TYPE == "heartbeat" for m in ms)
                          and any(m.TYPE == "resume" for m in ms))
    beat = [m for m in got if m.TYPE == "heartbeat"][-1]
    assert dict(beat.checks) == {"web": "failed"}  # the level says it after the resume
