"""The agent and its port in-process: control requests, hello cadence, the bounded queue."""

from __future__ import annotations

import os
import time

from guest_agent.agent import HELLO_EVERY, Agent
from guest_agent.config import AgentConfig, CheckConfig
from guest_agent.port import MAX_QUEUE_BYTES, Port
from guest_agent.reactor import Reactor
from iim_protocol.messages import Heartbeat
from tests.guest_agent.test_monitor import FakeClock, FakeSource


def make_agent(tmp_path, host=None):
    port = str(host.link) if host else str(tmp_path / "noport")
    cfg = AgentConfig(
        port=port,
        control_socket=str(tmp_path / "ctl.sock"),
        heartbeat_interval=0.2,
        checks=(CheckConfig("web", "process", "nginx", grace=0.0),),
    )
    src = FakeSource()
    src.add(10, "nginx")
    return Agent(cfg, clock=FakeClock(), source=src, use_pidfd=False)


def test_control_requests(tmp_path):
    agent = make_agent(tmp_path)
    agent.monitor.on_timer(agent._clock())
    st = agent.handle({"cmd": "status"})["status"]
    assert st["checks"][0]["pids"] == [10] and st["checks"][0]["state"] == "ok"
    assert st["port"]["host_connected"] is False and st["pause"] is None
    assert agent.handle({"cmd": "pause", "duration": 60, "reason": "x"})["duration"] == 60.0
    assert agent.handle({"cmd": "status"})["status"]["pause"] == {"remaining": 60.0, "reason": "x"}
    for bad in ({"duration": "1m"}, {"duration": 0}, {"duration": 1e9}, {"duration": True}):
        answer = agent.handle({"cmd": "pause", **bad})
        assert answer["ok"] is False, bad
    assert agent.handle({"cmd": "pause", "duration": 5, "reason": "a\nb"})["ok"] is False
    assert agent.handle({"cmd": "resume"}) == {"ok": True, "was_paused": True, "sent": False}
    assert agent.handle({"cmd": "nope"})["ok"] is False
    assert agent.port.frames_dropped >= 2  # pause and resume, no host


def test_hello_again_every_n_heartbeats(tmp_path, host):
    host.open()
    agent = make_agent(tmp_path, host)
    agent.port.on_timer(agent._clock())  # opens the pty: hello + heartbeat
    for _ in range(HELLO_EVERY):
        agent._beat()
    got = host.read_until(lambda ms: sum(m.TYPE == "hello" for m in ms) >= 2, timeout=3)
    assert got[0].TYPE == "hello"
    second = [i for i, m in enumerate(got) if m.TYPE == "hello"][1]
    # hello goes out again just before heartbeat number HELLO_EVERY
    assert sum(m.TYPE == "heartbeat" for m in got[:second]) == HELLO_EVERY - 1
    agent.port.close()


def test_queue_is_bounded_when_the_host_does_not_read(host):
    host.open()
    connects = []
    port = Port(str(host.link), Reactor(), time.monotonic, lambda: connects.append(1))
    port.on_timer(time.monotonic())
    assert connects == [1] and port.connected and port.is_tty
    beat = Heartbeat(seq=1, checks=tuple((f"check-{i}", "ok") for i in range(30)))
    for _ in range(2000):  # ~1.4 MB: far more than the pty and the queue hold
        port.send(beat)
    assert port.queued_bytes <= MAX_QUEUE_BYTES
    assert port.frames_dropped > 0
    assert port.frames_sent + port.frames_dropped + len(port._queue) == 2000
    port.close()


def test_port_reopens_after_hangup(tmp_path, host):
    host.open()
    clock = FakeClock()
    reactor = Reactor()
    port = Port(str(host.link), reactor, clock, lambda: None)
    port.on_timer(clock.now)
    assert port.connected
    host.close()
    reactor.run_once(1.0)  # hangup
    assert port.state == "closed" and port.next_deadline() is not None
    clock.now = port.next_deadline()
    port.on_timer(clock.now)  # the link is gone: waits, does not raise
    assert port.state == "closed" and "No such file" in port.last_error
    host.open()
    clock.now = port.next_deadline()
    port.on_timer(clock.now)
    assert port.connected and port.opens == 2
    port.close()
    assert os.path.exists(host.link)
