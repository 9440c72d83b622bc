"""A guest that floods valid frames cannot flood the host's log (issue 10).

iim-relay runs as a real process; the guest is a thread behind the socket QEMU
would listen on.  It sends hello 1,000 times a second (a new start id each
time, as a restarting agent would), then, on a fresh connection, failure frames
before any hello.  The relay's log may grow by a few lines a minute per kind,
while status keeps the exact counts.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import pytest

from iim_protocol.codec import encode
from iim_protocol.messages import Failure, Hello
from tests.host_relay.relay_testing import listen, short_dir
from tests.host_relay.test_restart_e2e import RelayProc, wait_for

PHASE = 4.0  # seconds of each flood
RATE = 1000  # frames a second


@pytest.fixture
def state_dir():
    yield from short_dir()


class FloodGuest(threading.Thread):
    """Plays QEMU + a hostile agent: ``frames(n)`` gives the n-th frame to send."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.listener = listen(path)
        self.listener.settimeout(0.2)
        self.path = path
        self.mode = "idle"
        self.sent = 0
        self.connections = 0
        self.stop = threading.Event()
        self.conn: socket.socket | None = None

    def frame(self, n: int) -> bytes:
        if self.mode == "hello":
            return encode(Hello(protocol_version=1, agent_version="0.2-flood", boot_id="b1",
                                heartbeat_interval=1.0, checks=("app",),
                                start_id=f"s{n}", pause=None, pause_known=True))
        return encode(Failure(seq=n + 1, check="app", reason="flood"))

    def run(self) -> None:
        while not self.stop.is_set():
            if self.conn is None:
                try:
                    self.conn, _ = self.listener.accept()
                    self.connections += 1
                except (TimeoutError, socket.timeout):
                    continue
            if self.mode == "idle":
                time.sleep(0.01)
                continue
            start, n = time.monotonic(), 0
            mode = self.mode
            while self.mode == mode and not self.stop.is_set():
                due = int((time.monotonic() - start) * RATE)
                if n < due:
                    try:
                        self.conn.sendall(b"".join(self.frame(n + i) for i in range(due - n)))
                    except OSError:
                        break
                    self.sent += due - n
                    n = due
                time.sleep(0.002)

    def reconnect(self, mode: str) -> None:
        """Hang up; the relay reconnects and this mode floods the new connection."""
        self.mode = "idle"
        time.sleep(0.05)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.mode = mode

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.listener.close()
        if self.conn is not None:
            self.conn.close()
        os.unlink(self.path)


def log_rate(relay: RelayProc, seconds: float) -> tuple[float, str]:
    """Bytes per second the relay's log grew by over ``seconds``, and what it wrote."""
    before = relay.log_path.stat().st_size
    time.sleep(seconds)
    with open(relay.log_path, "rb") as f:
        f.seek(before)
        text = f.read().decode(errors="replace")
    return len(text.encode()) / seconds, text


@pytest.mark.slow
def test_hello_and_early_failure_floods_log_a_few_lines_and_status_counts_them(
        tmp_path, state_dir) -> None:
    hello_inst, failure_inst = str(uuid.uuid4()), str(uuid.uuid4())
    guests = {hello_inst: FloodGuest(f"{state_dir}/ch/{hello_inst}.sock"),
              failure_inst: FloodGuest(f"{state_dir}/ch/{failure_inst}.sock")}
    for guest in guests.values():
        guest.start()
    relay = RelayProc(tmp_path, state_dir, "flood-host", "http://127.0.0.1:9/v1")
    try:
        relay.start()
        wait_for("the relay connected", lambda: all(g.connections for g in guests.values()), 20)
        time.sleep(0.5)  # past the connect lines
        guests[hello_inst].mode = "hello"
        guests[failure_inst].mode = "failure"  # never a hello on this one
        sent = {u: g.sent for u, g in guests.items()}
        time.sleep(1.0)  # the first line of each kind
        rate, text = log_rate(relay, PHASE)
        # What the guests cause; the sender's retries (no masakari-api here) follow its
        # own backoff whatever a guest sends.
        guest_lines = [ln for ln in text.splitlines()
                       if " host_relay.channel " in ln or " host_relay.render " in ln]
        guest_rate = sum(len(ln) + 1 for ln in guest_lines) / PHASE
        for inst, guest in guests.items():
            lines = [ln for ln in guest_lines if inst in ln]
            print(f"{guest.mode} flood: guest sent {(guest.sent - sent[inst]) / (PHASE + 1):.0f} "
                  f"frames/s; {len(lines)} lines about it in {PHASE:.0f} s")
            assert len(lines) <= 2, lines
        print(f"relay log grew {rate:.0f} B/s over {PHASE:.0f} s (both floods), "
              f"{guest_rate:.0f} B/s of it about the guests' input")
        # A few lines a minute per kind, not one per frame: well under 1 KB/s.
        assert guest_rate < 500, text[-3000:]
        hello_snap, failure_snap = relay.instance(hello_inst), relay.instance(failure_inst)
        # The exact counts stay in status: every frame the relay read is counted.
        assert hello_snap["decoder"]["frames_ok"] >= 1000, hello_snap
        assert hello_snap["log_suppressed"].get("started", 0) >= 500, hello_snap
        # Each early failure frame is counted by the detector (notified once, then
        # suppressed by the cooldown or ignored), and its held-back lines by kind.
        counters = (failure_snap["detector"] or {})["counters"]
        acted = sum(sum(counters[k].values()) for k in ("notified", "suppressed", "ignored"))
        assert acted >= 1000, failure_snap
        assert failure_snap["log_suppressed"], failure_snap
        print("status of the hello flood:", hello_snap["decoder"]["frames_ok"], "frames,",
              hello_snap["log_suppressed"])
        print("status of the failure flood:", failure_snap["decoder"]["frames_ok"], "frames,",
              counters, failure_snap["log_suppressed"])
        assert "Traceback" not in relay.log()
    finally:
        relay.stop()
        for guest in guests.values():
            guest.close()
