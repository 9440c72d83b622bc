"""The agent as a real process: a pty plays the host, real children are watched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.guest_agent.conftest import agent_env, write_config

CHECK = "  - name: {name}\n    process: {proc}\n    grace: {grace}\n"


def types(messages):
    return [m.TYPE for m in messages]


def cli(*args, timeout=10.0):
    return subprocess.run(
        [sys.executable, "-m", "guest_agent.cli", *args],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=timeout,
    )


def start(tmp_path, host, agent_factory, sock_path, checks="", open_port=True):
    if open_port:
        host.open()
    cfg = write_config(tmp_path / "agent.yaml", host.link, sock_path, checks)
    agent = agent_factory(cfg)
    return agent, cfg


def test_hello_then_heartbeats(tmp_path, host, agent_factory, sock_path, targets):
    targets.start("iimtest-hb")
    start(
        tmp_path,
        host,
        agent_factory,
        sock_path,
        CHECK.format(name="hb", proc="iimtest-hb", grace=2),
    )
    got = host.read_until(lambda ms: types(ms).count("heartbeat") >= 3)
    assert got[0].TYPE == "hello"
    assert got[0].checks == ("hb",)
    assert got[0].heartbeat_interval == 0.2
    beats = [m for m in got if m.TYPE == "heartbeat"]
    assert dict(beats[-1].checks) == {"hb": "ok"}
    assert [b.seq for b in beats] == sorted(b.seq for b in beats)


def test_kill_sends_failure_fast_and_restart_recovers(
    tmp_path, host, agent_factory, sock_path, targets
):
    child = targets.start("iimtest-kill")
    start(
        tmp_path,
        host,
        agent_factory,
        sock_path,
        CHECK.format(name="k", proc="iimtest-kill", grace=0),
    )
    host.read_until(
        lambda ms: any(m.TYPE == "heartbeat" and dict(m.checks) == {"k": "ok"} for m in ms)
    )
    killed_at = time.monotonic()
    targets.kill(child)
    failure = host.wait_for("failure", timeout=2.0, check="k")
    assert time.monotonic() - killed_at < 1.0
    assert failure.reason == f"process iimtest-kill: pid {child.pid} exited"

    targets.start("iimtest-kill")
    host.wait_for("recovered", timeout=3.0, check="k")


def test_grace_is_respected(tmp_path, host, agent_factory, sock_path, targets):
    child = targets.start("iimtest-grace")
    start(
        tmp_path,
        host,
        agent_factory,
        sock_path,
        CHECK.format(name="g", proc="iimtest-grace", grace=1.5),
    )
    host.read_until(
        lambda ms: any(m.TYPE == "heartbeat" and dict(m.checks) == {"g": "ok"} for m in ms)
    )
    killed_at = time.monotonic()
    targets.kill(child)
    failure = host.wait_for("failure", timeout=4.0, check="g")
    waited = time.monotonic() - killed_at
    assert 1.4 <= waited < 3.0, waited
    assert "exited" in failure.reason


def test_restart_within_grace_is_no_failure(tmp_path, host, agent_factory, sock_path, targets):
    child = targets.start("iimtest-rs")
    start(
        tmp_path,
        host,
        agent_factory,
        sock_path,
        CHECK.format(name="r", proc="iimtest-rs", grace=1.5),
    )
    host.read_until(
        lambda ms: any(m.TYPE == "heartbeat" and dict(m.checks) == {"r": "ok"} for m in ms)
    )
    targets.kill(child)
    time.sleep(0.3)
    targets.start("iimtest-rs")
    got = host.read_until(lambda ms: types(ms).count("heartbeat") >= 12)  # ~2.4 s, past grace
    assert "failure" not in types(got)
    assert dict(got[-1].checks) == {"r": "ok"}


def test_check_that_never_starts_fails_after_grace(tmp_path, host, agent_factory, sock_path):
    start(
        tmp_path,
        host,
        agent_factory,
        sock_path,
        CHECK.format(name="n", proc="iimtest-none", grace=0.5),
    )
    failure = host.wait_for("failure", timeout=3.0, check="n")
    assert failure.reason == "process iimtest-none: no process matches"


def test_sigterm_sends_goodbye_and_exits_0(tmp_path, host, agent_factory, sock_path):
    agent, _ = start(tmp_path, host, agent_factory, sock_path)
    host.wait_for("heartbeat")
    agent.signal(signal.SIGTERM)
    goodbye = host.wait_for("goodbye", timeout=3.0)
    assert goodbye.reason in ("stop", "shutdown")
    assert agent.wait(5) == 0
    assert not sock_path.exists()


def test_sighup_reload_adds_a_check(tmp_path, host, agent_factory, sock_path, targets):
    targets.start("iimtest-a")
    targets.start("iimtest-b")
    agent, cfg = start(
        tmp_path, host, agent_factory, sock_path, CHECK.format(name="a", proc="iimtest-a", grace=1)
    )
    host.wait_for("heartbeat")
    write_config(
        cfg,
        host.link,
        sock_path,
        CHECK.format(name="a", proc="iimtest-a", grace=1)
        + CHECK.format(name="b", proc="iimtest-b", grace=1),
    )
    agent.signal(signal.SIGHUP)
    hello = host.wait_for("hello", checks=("a", "b"))
    assert hello.checks == ("a", "b")
    host.read_until(
        lambda ms: any(
            m.TYPE == "heartbeat" and dict(m.checks) == {"a": "ok", "b": "ok"} for m in ms
        )
    )

    cfg.write_text(cfg.read_text() + "bogus: 1\n")
    agent.signal(signal.SIGHUP)
    host.read_until(lambda ms: types(ms).count("heartbeat") >= 3)
    assert "reload failed, keeping the running config" in agent.log()
    assert "bogus: unknown key" in agent.log()
    assert agent.proc.poll() is None


def test_pause_resume_and_status(tmp_path, host, agent_factory, sock_path, targets):
    child = targets.start("iimtest-st")
    _, cfg = start(
        tmp_path, host, agent_factory, sock_path, CHECK.format(name="s", proc="iimtest-st", grace=5)
    )
    host.read_until(
        lambda ms: any(m.TYPE == "heartbeat" and dict(m.checks) == {"s": "ok"} for m in ms)
    )

    out = cli("pause", "-c", str(cfg), "--for", "10m", "--reason", "upgrading")
    assert out.returncode == 0, out.stderr
    assert "paused for 10m" in out.stdout
    pause = host.wait_for("pause")
    assert pause.duration == 600.0 and pause.reason == "upgrading"

    out = cli("status", "--json", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["agent"]["watch_method"] == "pidfd"
    assert status["port"]["host_connected"] is True
    assert status["port"]["kind"] == "tty"
    assert status["port"]["frames_sent"] > 0
    assert 0 < status["pause"]["remaining"] <= 600 and status["pause"]["reason"] == "upgrading"
    (check,) = status["checks"]
    assert check["name"] == "s" and check["state"] == "ok" and check["pids"] == [child.pid]
    assert check["last_change"].endswith("+00:00")

    out = cli("status", "-c", str(cfg))
    assert out.returncode == 0 and "host connected" in out.stdout and "s" in out.stdout

    out = cli("resume", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    host.wait_for("resume")
    assert json.loads(cli("status", "--json", "-c", str(cfg)).stdout)["pause"] is None

    bad = cli("pause", "-c", str(cfg), "--for", "8d")
    assert bad.returncode != 0 and "at most 7d" in bad.stderr


def test_status_without_agent(tmp_path, sock_path):
    cfg = write_config(tmp_path / "agent.yaml", tmp_path / "port", sock_path)
    for args in (["status"], ["pause", "--for", "1m"], ["resume"]):
        out = cli(*args, "-c", str(cfg))
        assert out.returncode == 3
        assert f"no iim-agent is running (control socket {sock_path}:" in out.stderr


def test_missing_port_then_it_appears(tmp_path, host, agent_factory, sock_path):
    agent, _ = start(tmp_path, host, agent_factory, sock_path, open_port=False)
    deadline = time.monotonic() + 10  # the port must be missing when the agent looks
    while "does not exist yet" not in agent.log():
        assert agent.proc.poll() is None and time.monotonic() < deadline, agent.log()
        time.sleep(0.05)
    time.sleep(0.5)  # a few retries, which must not be logged again
    assert agent.proc.poll() is None
    host.open()
    got = host.read_until(lambda ms: "heartbeat" in types(ms), timeout=8.0)
    assert got[0].TYPE == "hello"
    assert agent.log().count("does not exist yet") == 1  # logged once, not per retry


def test_port_vanishes_and_host_returns(tmp_path, host, agent_factory, sock_path):
    agent, _ = start(
        tmp_path,
        host,
        agent_factory,
        sock_path,
        CHECK.format(name="v", proc="iimtest-nope", grace=0),
    )
    host.wait_for("failure", check="v")
    host.close()  # the host side goes away: the agent sees a hangup
    time.sleep(0.8)
    assert agent.proc.poll() is None
    host.open()
    got = host.read_until(lambda ms: "failure" in types(ms), timeout=8.0)
    # The whole state, in the order of a sync answer: hello, heartbeat, failures.
    assert types(got)[:3] == ["hello", "heartbeat", "failure"]
    assert dict(got[1].checks) == {"v": "failed"}
    assert got[2].check == "v" and got[2].reason == "process iimtest-nope: no process matches"


def test_garbage_from_host_is_ignored(tmp_path, host, agent_factory, sock_path):
    agent, cfg = start(tmp_path, host, agent_factory, sock_path)
    host.wait_for("heartbeat")
    junk = (
        os.urandom(20000) + b"\xc1\x49\x01\xff\xff" + os.urandom(100) + b"\xc1\x49\x01\x00\x05abc"
    )
    for i in range(0, len(junk), 1000):
        host.write(junk[i : i + 1000])
    got = host.read_until(lambda ms: types(ms).count("heartbeat") >= 3)
    assert got
    status = json.loads(cli("status", "--json", "-c", str(cfg)).stdout)
    received = status["port"]["received"]
    assert received["bytes_received"] == len(junk)
    assert received["frames_ok"] == 0
    assert received["frames_rejected"] >= 1
    assert "broke" not in agent.log()  # the port was never reopened


FORBIDDEN = ["oslo", "keystoneauth1", "openstack", "libvirt", "host_relay"]
FIND_BAD = (
    f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} or m.startswith('oslo')]\n"
)


def test_guest_imports_nothing_host_side(tmp_path):
    code = (
        "import importlib, pkgutil, sys, guest_agent.cli, guest_agent.agent\n"
        "for m in pkgutil.iter_modules(guest_agent.__path__):\n"
        "    importlib.import_module('guest_agent.' + m.name)\n"
        "assert 'guest_agent.port' in sys.modules\n"
        + FIND_BAD
        + "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=agent_env()
    )
    assert out.returncode == 0, out.stdout + out.stderr

    cfg = tmp_path / "agent.yaml"
    cfg.write_text("checks: []\n")
    code = (
        "import sys\n"
        "from guest_agent.cli import main\n"
        f"sys.argv = ['iim-agent', 'check-config', '-c', {str(cfg)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        + FIND_BAD
        + "print('bad', bad); sys.exit(1 if bad or code else 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=agent_env()
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout
