"""The agent in-process over a real pty: every hello and heartbeat says the whole state,
and a host ``sync`` is answered (at most once a second) with hello, heartbeat and failures."""

from __future__ import annotations

from guest_agent.agent import HELLO_EVERY
from guest_agent.resync import ANSWER_GAP
from iim_protocol.codec import MAX_HOST_BODY, encode
from iim_protocol.messages import Heartbeat, Hello, PauseState, Resume, Sync
from tests.guest_agent.test_agent_unit import make_agent
from tests.protocol.samples import frame_obj

SYNC = encode(Sync())


def types(messages):
    return [m.TYPE for m in messages]


def connected_agent(tmp_path, host):
    host.open()
    agent = make_agent(tmp_path, host)
    agent.monitor.on_timer(agent._clock())
    agent.port.on_timer(agent._clock())  # opens the pty: the whole state goes out
    assert agent.port.connected
    return agent


def fail_the_check(agent) -> None:
    agent._source.procs.clear()
    agent._clock.now += agent.config.rescan_interval
    agent.monitor.on_timer(agent._clock())
    assert agent.monitor.trackers["web"].state == "failed"


def pump(agent, host, until, rounds=50):
    """Run the agent's loop (no waiting) and read the host end until ``until(got)``."""
    got = []
    for _ in range(rounds):
        agent.reactor.run_once(0.05)
        agent._on_timers()
        try:
            got += host.read_until(lambda ms: bool(ms), timeout=0.05)
        except AssertionError:
            pass
        if until(got):
            return got
    raise AssertionError(f"not seen; got {types(got)}")


def test_hello_and_heartbeat_carry_the_whole_state(tmp_path, host):
    agent = connected_agent(tmp_path, host)
    try:
        got = host.read_until(lambda ms: "heartbeat" in types(ms), timeout=3)
        hello, beat = got[0], got[1]
        assert isinstance(hello, Hello) and isinstance(beat, Heartbeat)
        assert len(agent.start_id) == 32 and agent.start_id == hello.start_id
        assert hello.pause is None and hello.pause_known  # nil: not paused, authoritative
        assert beat.interval == 0.2
        assert beat.boot_id == hello.boot_id == agent.boot_id
        assert beat.start_id == agent.start_id
        assert beat.pause is None and beat.pause_known
        assert dict(beat.checks) == {"web": "ok"}
    finally:
        agent.port.close()


def test_the_pause_level_is_in_every_hello_and_heartbeat(tmp_path, host):
    agent = connected_agent(tmp_path, host)
    try:
        host.read_until(lambda ms: "heartbeat" in types(ms), timeout=3)
        agent.handle({"cmd": "pause", "duration": 600, "reason": "upgrade"})
        agent._clock.now += 100
        for _ in range(HELLO_EVERY):
            agent._beat()
        got = host.read_until(lambda ms: types(ms).count("heartbeat") >= HELLO_EVERY, timeout=5)
        beats = [m for m in got if m.TYPE == "heartbeat"]
        assert all(b.pause == PauseState(500.0, "upgrade") for b in beats)
        # The periodic hello: the same start_id (a repeat), the pause in it, and a
        # pause frame right after it for a 0.1.0 relay, on which a hello ends a pause.
        i = types(got).index("hello")
        assert got[i].start_id == agent.start_id and got[i].pause == PauseState(500.0, "upgrade")
        assert got[i + 1].TYPE == "pause" and got[i + 1].duration == 500.0

        agent.handle({"cmd": "resume"})
        agent._beat()
        got = host.read_until(lambda ms: "heartbeat" in types(ms), timeout=3)
        assert types(got) == ["resume", "heartbeat"]
        assert got[1].pause is None and got[1].pause_known
    finally:
        agent.port.close()


def test_each_agent_start_has_its_own_start_id(tmp_path):
    first, second = make_agent(tmp_path / "a"), make_agent(tmp_path / "b")
    assert first.start_id != second.start_id
    assert first.boot_id == second.boot_id  # same boot, two starts
    assert first.handle({"cmd": "status"})["status"]["agent"]["start_id"] == first.start_id


def test_a_reload_keeps_the_start_id(tmp_path, host):
    agent = connected_agent(tmp_path, host)
    try:
        start_id = agent.start_id
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(
            f"port: {host.link}\ncontrol_socket: {tmp_path / 'ctl.sock'}\n"
            "heartbeat_interval: 0.5\nchecks: []\n"
        )
        agent.config_path = str(cfg)
        assert agent.reload()
        got = host.read_until(lambda ms: types(ms).count("hello") >= 2, timeout=3)
        hellos = [m for m in got if m.TYPE == "hello"]
        assert hellos[-1].start_id == start_id and hellos[-1].heartbeat_interval == 0.5
    finally:
        agent.port.close()


def test_sync_is_answered_with_hello_heartbeat_and_failures(tmp_path, host):
    agent = connected_agent(tmp_path, host)
    try:
        fail_the_check(agent)
        host.read_until(lambda ms: "failure" in types(ms), timeout=3)
        agent._next_heartbeat = float("inf")  # only the answer on the wire
        host.write(SYNC)
        got = pump(agent, host, lambda ms: "failure" in types(ms))
        assert types(got) == ["hello", "heartbeat", "failure"]
        assert got[0].start_id == agent.start_id
        assert dict(got[1].checks) == {"web": "failed"}
        assert got[2].check == "web" and got[2].reason == "process nginx: pid 10 exited"
        st = agent.handle({"cmd": "status"})["status"]["host_input"]
        assert st == {
            "syncs_received": 1, "answers": 1, "coalesced": 0, "ignored": 0, "frames_rejected": 0
        }
    finally:
        agent.port.close()


def test_syncs_inside_a_second_get_one_more_answer_at_its_end(tmp_path, host):
    agent = connected_agent(tmp_path, host)
    try:
        host.read_until(lambda ms: "heartbeat" in types(ms), timeout=3)
        agent._next_heartbeat = float("inf")  # only answers on the wire
        host.write(SYNC)
        first = pump(agent, host, lambda ms: "heartbeat" in types(ms))
        assert types(first) == ["hello", "heartbeat"]
        answered_at = agent._clock()
        host.write(SYNC * 10)
        for _ in range(10):  # the loop reads them all; the clock has not moved
            agent.reactor.run_once(0.05)
            agent._on_timers()
        assert agent.syncs.stats.syncs_received == 11
        assert agent.syncs.next_deadline() == answered_at + ANSWER_GAP
        agent._clock.now = answered_at + ANSWER_GAP
        second = pump(agent, host, lambda ms: "heartbeat" in types(ms))
        assert types(second) == ["hello", "heartbeat"]
        stats = agent.syncs.stats
        assert (stats.answers, stats.coalesced) == (2, 9)
    finally:
        agent.port.close()


def test_other_host_frames_are_counted_and_not_answered(tmp_path, host):
    agent = connected_agent(tmp_path, host)
    try:
        host.read_until(lambda ms: "heartbeat" in types(ms), timeout=3)
        agent._next_heartbeat = float("inf")
        big = frame_obj({"type": "sync", "pad": "x" * MAX_HOST_BODY})  # oversize for the host
        host.write(encode(Resume()) * 3 + big + b"noise" + frame_obj({"type": "nope"}))
        for _ in range(10):
            agent.reactor.run_once(0.05)
        st = agent.handle({"cmd": "status"})["status"]
        assert st["host_input"]["ignored"] == 3
        assert st["host_input"]["syncs_received"] == 0 and st["host_input"]["answers"] == 0
        assert st["port"]["received"]["rejected"] == {"oversize": 1, "unknown_type": 1}
        assert st["host_input"]["frames_rejected"] == 2
        assert agent.port.frames_sent == 2  # only the state sent on connect
    finally:
        agent.port.close()
