"""The agent process answers a host ``sync`` over a real pty, and survives a host flood."""

from __future__ import annotations

import json
import os
import select
import time

import pytest

from guest_agent.resync import ANSWER_GAP
from iim_protocol.codec import MAGIC, encode
from iim_protocol.messages import Hello, Resume, Sync
from tests.guest_agent.test_agent_e2e import CHECK, cli, start, types
from tests.protocol.samples import LARGEST_HEARTBEAT, frame_obj

SYNC = encode(Sync())
ANSWER_BOUND = 1.0  # seconds from writing sync to the last frame of the answer


def test_sync_gets_hello_heartbeat_and_failure_back_at_once(
    tmp_path, host, agent_factory, sock_path
):
    agent, cfg = start(
        tmp_path, host, agent_factory, sock_path,
        CHECK.format(name="gone", proc="iimtest-none", grace=0),
    )
    first = host.wait_for("failure", check="gone")  # connected, initial state sent
    start_id = next(m for m in host.seen if m.TYPE == "hello").start_id
    time.sleep(ANSWER_GAP)  # nothing else is in flight
    host.read_until(lambda ms: "heartbeat" in types(ms))

    written = time.monotonic()
    host.write(SYNC)
    got = host.read_until(lambda ms: "failure" in types(ms), timeout=5.0)
    took = time.monotonic() - written
    print(f"sync answered in {took * 1000:.1f} ms")
    # The answer is written in one go: hello, heartbeat, failure, one after the
    # other (a regular heartbeat may come before it, or right after it in the same read).
    i = types(got).index("hello")
    assert types(got)[i:i + 3] == ["hello", "heartbeat", "failure"], types(got)
    hello, beat, failure = got[i:i + 3]
    assert hello.start_id == start_id  # the same process: a repeat, not a start
    assert dict(beat.checks) == {"gone": "failed"} and beat.start_id == start_id
    assert failure.check == "gone" and failure.reason == first.reason
    assert took < ANSWER_BOUND, f"answer took {took:.3f}s"

    status = json.loads(cli("status", "--json", "-c", str(cfg)).stdout)
    assert status["host_input"]["syncs_received"] == 1
    assert status["host_input"]["answers"] == 1
    out = cli("status", "-c", str(cfg)).stdout
    assert "from host: 1 syncs (1 answered, 0 coalesced), 0 frames rejected" in out


@pytest.mark.slow
def test_a_host_flood_is_counted_and_heartbeats_go_on(tmp_path, host, agent_factory, sock_path):
    agent, cfg = start(tmp_path, host, agent_factory, sock_path)
    host.wait_for("heartbeat")
    host.read_until(lambda ms: types(ms).count("heartbeat") >= 2)
    assert host.master is not None

    other = encode(Resume())  # small enough to decode: counted as ignored
    pieces = [
        os.urandom(3000),  # junk
        encode(LARGEST_HEARTBEAT),  # oversize for the host decoder
        encode(Hello(1, "x", "b", 1.0)),  # oversize too
        MAGIC + b"\x01\xff\xff" + os.urandom(50),  # a header claiming 64 KiB
        other * 20,
        frame_obj({"type": "nope"}),  # unknown type
        SYNC,
    ]
    written = syncs = others = 0
    seen = []
    flood_seconds = 3.0
    began = time.monotonic()
    i = 0
    while time.monotonic() - began < flood_seconds:
        piece = pieces[i % len(pieces)]
        i += 1
        try:
            n = os.write(host.master, piece)
        except BlockingIOError:
            n = 0
        written += n
        if n == len(piece):
            syncs += piece == SYNC
            others += piece.count(other)
        elif n:
            # A partial write: finish it so the counts stay exact.
            host.write(piece[n:])
            written += len(piece) - n
            syncs += piece == SYNC
            others += piece.count(other)
        ready, _, _ = select.select([host.master], [], [], 0.002)
        if ready:
            try:
                seen += host.decoder.feed(os.read(host.master, 65536))
            except BlockingIOError:
                pass
    flood_took = time.monotonic() - began
    seen += host.read_until(lambda ms: "heartbeat" in types(ms), timeout=2.0)

    beats = [m for m in seen if m.TYPE == "heartbeat"]
    hellos = [m for m in seen if m.TYPE == "hello"]
    # Heartbeats went on every 0.2 s through the flood (allow a loaded machine half).
    assert len(beats) >= flood_took / 0.2 / 2, (len(beats), flood_took)
    # At most one answer a second, whatever the number of syncs.
    assert syncs > 10
    assert 1 <= len(hellos) <= flood_took / ANSWER_GAP + 2, (len(hellos), syncs)
    assert agent.proc.poll() is None
    print(f"flood {flood_took:.2f}s: {written} bytes, {syncs} syncs, {len(beats)} heartbeats, "
          f"{len(hellos)} hellos back")

    status = json.loads(cli("status", "--json", "-c", str(cfg)).stdout)
    hi, received = status["host_input"], status["port"]["received"]
    assert received["bytes_received"] == written
    assert hi["syncs_received"] == syncs
    assert hi["ignored"] == others  # the "nope" frames are rejected, not ignored
    assert received["rejected"]["oversize"] >= 1
    assert received["rejected"]["unknown_type"] >= 1
    assert hi["frames_rejected"] == received["frames_rejected"] > 0
    assert syncs - 1 <= hi["answers"] + hi["coalesced"] <= syncs  # one may still wait
    assert 2 <= hi["answers"] <= flood_took / ANSWER_GAP + 2
    print(f"status: {hi}, rejected {received['rejected']}")
    # Bounded log: at most one line a minute about rejected host frames.
    log = agent.log()
    assert log.count("frames the agent rejected") == 1
    assert "Traceback" not in log and "broke" not in log
