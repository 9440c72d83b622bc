"""Mixed versions, with real processes over a pty.

* The new agent and a 0.1.0 relay (which ignores ``sync`` and the new fields):
  every frame the agent writes decodes, for 0.1.0's rules, to a 0.1.0 message,
  and a 0.1.0 relay's pause (ended by every hello) is never open while the
  guest is paused, so a failure inside the maintenance is never reported.
* A 0.1.0 agent and the new relay's ``sync``: counted as an unknown type and
  skipped, heartbeats go on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from iim_protocol.codec import Decoder, encode
from iim_protocol.messages import Failure, Message, Pause, Sync
from tests.guest_agent.conftest import AgentProcess
from tests.guest_agent.test_agent_e2e import cli, types
from tests.protocol.compat_010 import (
    DECODE_010,
    FIELDS_010,
    message_from_wire_010,
    old_codec,
    split_frames,
)
from tests.protocol.test_compat_010 import as_010

INTERVAL = 0.1  # the fastest allowed: the periodic hello (every 30 beats) within 3 s


def config(tmp_path: Path, port: Path, sock: Path, proc: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"port: {port}\ncontrol_socket: {sock}\nheartbeat_interval: {INTERVAL}\n"
        f"rescan_interval: 0.5\nchecks:\n  - name: web\n    process: {proc}\n    grace: 0\n"
    )
    return path


def record(host, seconds: float) -> bytes:
    """Raw bytes from the agent for ``seconds`` (the pty decoder sees them too)."""
    data = bytearray()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunk = os.read(host.master, 65536)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        data += chunk
        host.seen += host.decoder.feed(chunk)
    return bytes(data)


def relay_010_pause_open(messages: list[Message]) -> list[bool]:
    """For each message, whether a 0.1.0 relay's pause is in force when it arrives.

    0.1.0 relay rules: ``pause`` opens it, ``resume`` and every ``hello`` end it.
    """
    paused, out = False, []
    for m in messages:
        if m.TYPE == "hello" or m.TYPE == "resume":
            paused = False
        elif isinstance(m, Pause):
            paused = True
        out.append(paused)
    return out


@pytest.mark.slow
def test_the_new_agent_speaks_010_to_a_010_relay(
    tmp_path, host, agent_factory, sock_path, targets
):
    child = targets.start("iimtest-compat")
    host.open()
    cfg = config(tmp_path, host.link, sock_path, "iimtest-compat")
    agent = agent_factory(cfg)
    stream = record(host, 0.8)
    deadline = time.monotonic() + 10  # a loaded machine may start the agent slower
    while not os.path.exists(sock_path):
        assert time.monotonic() < deadline, "the agent's control socket never appeared"
        stream += record(host, 0.1)
    assert cli("pause", "-c", str(cfg), "--for", "10m", "--reason", "upgrade").returncode == 0
    stream += record(host, 0.3)
    targets.kill(child)  # the process stops inside the maintenance
    stream += record(host, 3.6)  # past 30 heartbeats: a periodic hello
    assert cli("resume", "-c", str(cfg)).returncode == 0
    stream += record(host, 0.3)
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    stream += record(host, 0.3)

    new = Decoder().feed(stream)
    kinds = types(new)
    assert kinds.count("hello") >= 2 and "failure" in kinds and kinds[-1] == "goodbye"
    assert {"pause", "resume"} <= set(kinds)

    # Frozen 0.1.0 rules: every frame is a 0.1.0 message, nothing rejected.
    old = []
    for body, msg in zip(split_frames(stream), new):
        obj = msgpack.unpackb(body, raw=False)
        seen, unknown = message_from_wire_010(obj)
        assert seen == as_010(msg)
        assert unknown == len(set(obj) - {"type"} - set(FIELDS_010[msg.TYPE]))
        old.append(seen)

    # A 0.1.0 relay's pause: open at every failure (case 4 of issue 9 stays fixed
    # even with an old relay), at every heartbeat that says "failed" while the
    # guest is paused, and never open after resume.
    open_at = relay_010_pause_open(old)
    first_pause = kinds.index("pause")
    resumed = kinds.index("resume")
    for i, m in enumerate(old):
        if first_pause <= i < resumed and m.TYPE != "hello":
            assert open_at[i], (i, kinds[max(0, i - 3) : i + 2])
        if i > resumed:
            assert not open_at[i]
    failures = [i for i, m in enumerate(old) if isinstance(m, Failure)]
    assert failures and all(open_at[i] for i in failures)
    periodic = [i for i in range(first_pause, resumed) if kinds[i] == "hello"]
    assert periodic, "no periodic hello inside the pause"
    assert all(kinds[i + 1] == "pause" for i in periodic)

    # And 0.1.0's own codec agrees, where git has it.
    code = old_codec(tmp_path / "v010")
    if code is not None:
        out = subprocess.run(
            [sys.executable, "-c", DECODE_010, str(code)],
            input=stream,
            capture_output=True,
            timeout=60,
            cwd=str(code),
            env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0, out.stderr.decode()
        seen = json.loads(out.stdout)
        assert seen["messages"] == [json.loads(json.dumps(m.to_wire())) for m in old]
        assert seen["stats"]["frames_rejected"] == 0
        assert seen["stats"]["unknown_fields"] > 0


def test_a_010_agent_counts_and_skips_sync(tmp_path, host, sock_path, targets):
    code = old_codec(tmp_path / "v010")
    if code is None:
        pytest.skip("no git history with 0.1.0 (a source tarball)")
    targets.start("iimtest-old")
    host.open()
    cfg = config(tmp_path, host.link, sock_path, "iimtest-old")
    env = {"PYTHONPATH": str(code), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    agent = AgentProcess(cfg, tmp_path / "old-agent.log")
    agent._log = open(agent.log_path, "wb")  # noqa: SIM115 - closed by agent.stop()
    agent.proc = subprocess.Popen(
        [sys.executable, "-m", "guest_agent.cli", "run", "-c", str(cfg)],
        stdout=agent._log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(code),
    )
    try:
        hello = host.wait_for("hello")
        assert hello.start_id == "" and not hello.pause_known  # really the 0.1.0 agent
        for _ in range(20):  # a relay reconnecting 20 times
            host.write(encode(Sync()))
        got = host.read_until(lambda ms: types(ms).count("heartbeat") >= 10, timeout=5.0)
        assert "hello" not in types(got)  # no answer: 0.1.0 does not know sync
        status = subprocess.run(
            [sys.executable, "-m", "guest_agent.cli", "status", "--json", "-c", str(cfg)],
            capture_output=True, text=True, env=env, cwd=str(code), timeout=10,
        )
        received = json.loads(status.stdout)["port"]["received"]
        assert received["rejected"] == {"unknown_type": 20}
        assert received["bytes_received"] == 20 * len(encode(Sync()))
        assert agent.proc.poll() is None
        assert "Traceback" not in agent.log()
    finally:
        agent.stop()
