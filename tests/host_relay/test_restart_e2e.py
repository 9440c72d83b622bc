"""Issue 9 end to end: iim-relay as a real process, restarted and starved of its disk.

A real masakari-api behind a proxy that counts POSTs (Masakari answers a repeat
with 409 and records it once, which would hide it), the relay as a subprocess, and
a guest played by :class:`LevelAgent`: it listens where QEMU would and speaks
protocol 0.2 (every heartbeat carries the agent's whole state).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from host_relay import control
from tests.host_relay.faulty_fs import loop_ext4, needs_root
from tests.host_relay.relay_testing import CountingProxy, LevelAgent, short_dir

pytestmark = pytest.mark.masakari

INTERVAL = 0.5
MISSED = 3  # hang after 1.5 s of silence


@pytest.fixture
def state_dir():
    yield from short_dir()


@pytest.fixture
def proxy(masakari):
    p = CountingProxy(masakari.url)
    yield p
    p.close()


def wait_for(what, predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


class RelayProc:
    def __init__(self, tmp_path, state_dir: str, host: str, url: str) -> None:
        self.state_dir = state_dir
        self.conf = tmp_path / "iim-relay.conf"
        self.conf.write_text(
            "[DEFAULT]\n"
            f"host = {host}\n"
            f"state_path = {state_dir}\n"
            "[channels]\n"
            f"socket_dir = {state_dir}/ch\n"
            "reconnect_initial = 0.1\n"
            "reconnect_max = 0.5\n"
            "[detector]\n"
            f"missed_heartbeats = {MISSED}\n"
            "min_interval = 0.1\n"
            "min_uptime = 0\n"
            "cooldown = 300\n"
            "[libvirt]\n"
            "connection_uri =\n"
            "[masakari]\n"
            "auth_type = none\n"
            f"endpoint = {url}\n"
            "backoff_initial = 0.2\n"
            "backoff_max = 1\n"
        )
        self.log_path = tmp_path / "relay.log"
        self.proc: subprocess.Popen | None = None
        self.env: dict | None = None

    def start(self) -> RelayProc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host_relay.cli", "run", "--config-file", str(self.conf)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        wait_for("the relay's control socket", lambda: self.status(), 20)
        return self

    def status(self) -> dict:
        try:
            return control.request(os.path.join(self.state_dir, "control.sock"),
                                   {"cmd": "status"}, 3.0)
        except control.ControlError:
            return {}

    def instance(self, inst: str) -> dict:
        return (self.status().get("instances") or {}).get(inst) or {}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def relay_on_ext4(tmp_path, runtime, masakari_host, proxy, inst: str):
    """A relay whose state_path is on a loop-mounted ext4 (errors=remount-ro), with
    ``runtime`` (made here) as its RuntimeDirectory and its channels in a short directory
    apart, and a LevelAgent for ``inst`` reporting a check "db" ok: (fs, relay, agent).
    Neither is started; both are stopped on the way out."""
    runtime.mkdir()
    with loop_ext4(errors="remount-ro") as fs:
        sock_dir = short_dir()
        chan_dir = next(sock_dir)
        state = os.path.join(fs.path, "state")
        os.makedirs(state)
        relay = RelayProc(tmp_path, state, masakari_host, proxy.url)
        relay.conf.write_text(relay.conf.read_text().replace(
            f"socket_dir = {state}/ch", f"socket_dir = {chan_dir}"))
        relay.env = dict(os.environ, RUNTIME_DIRECTORY=str(runtime))
        agent = LevelAgent(chan_dir, inst, INTERVAL, checks={"db": "ok"})
        try:
            yield fs, relay, agent
        finally:
            relay.stop()
            agent.close()
            next(sock_dir, None)


def armed_and_stored(relay: RelayProc, inst: str):
    """The detector is armed and its record is on disk (nothing pending)."""
    snap = relay.status()
    det = ((snap.get("instances") or {}).get(inst) or {}).get("detector") or {}
    store = snap.get("store") or {}
    return (det.get("state") == "armed" and store.get("pending_records", 0) == 0
            and store.get("pending_notifications", 0) == 0)


@pytest.mark.slow
def test_failure_sent_before_the_relay_reads_is_notified_via_the_level(
        tmp_path, state_dir, proxy, masakari, masakari_host) -> None:
    """Issue case 1: the failure frame went out while no relay read; heartbeats say failed."""
    inst = str(uuid.uuid4())
    # A serial-port agent (cannot see the host connect), not answering sync: the
    # failure frame is gone for good and only its heartbeats say the check failed.
    agent = LevelAgent(f"{state_dir}/ch", inst, INTERVAL, checks={"db": "failed"},
                       answer_sync=False, sees_host=False)
    relay = RelayProc(tmp_path, state_dir, masakari_host, proxy.url)
    try:
        relay.start()
        wait_for("the notification in masakari", lambda: masakari.notifications_for(inst), 20)
        time.sleep(3 * INTERVAL + 1.0)  # more heartbeats saying failed, and a hello
        assert proxy.posts[inst] == 1, relay.log()
        assert agent.hellos >= 1
    finally:
        relay.stop()
        agent.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm-then-hang", "hang-then-kill-9"])
def test_hang_across_a_relay_restart_is_notified(tmp_path, state_dir, proxy, masakari,
                                                 masakari_host, how) -> None:
    """Issue case 2: a guest that hangs while the relay is down, or just before kill -9."""
    inst = str(uuid.uuid4())
    agent = LevelAgent(f"{state_dir}/ch", inst, INTERVAL, checks={"db": "ok"})
    relay = RelayProc(tmp_path, state_dir, masakari_host, proxy.url)
    try:
        relay.start()
        wait_for("the detector armed and stored", lambda: armed_and_stored(relay, inst), 20)
        if how == "sigterm-then-hang":
            relay.stop(signal.SIGTERM)
            agent.hang()
        else:
            agent.hang()
            relay.stop(signal.SIGKILL)
        assert proxy.posts.get(inst, 0) == 0
        restarted = time.monotonic()
        relay.start()
        wait_for("the hang notified", lambda: proxy.posts.get(inst), MISSED * INTERVAL + 15)
        took = time.monotonic() - restarted
        # Never before missed x interval after the relay was back: downtime is not silence.
        assert took >= MISSED * INTERVAL - 0.1, relay.log()
        wait_for("the notification in masakari", lambda: masakari.notifications_for(inst), 10)
        time.sleep(1.0)
        assert proxy.posts[inst] == 1
    finally:
        relay.stop()
        agent.close()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_restart_inside_the_cooldown_posts_once(tmp_path, state_dir, proxy, masakari,
                                                masakari_host, sig) -> None:
    """Issue case 3: the agent re-sends its failure after the restart; no second POST."""
    inst = str(uuid.uuid4())
    agent = LevelAgent(f"{state_dir}/ch", inst, INTERVAL, checks={"db": "ok"})
    relay = RelayProc(tmp_path, state_dir, masakari_host, proxy.url)
    try:
        relay.start()
        wait_for("the detector armed", lambda: armed_and_stored(relay, inst), 20)
        agent.fail("db", "db exited 1")
        wait_for("the notification delivered", lambda: masakari.notifications_for(inst)
                 and (relay.status().get("outbox") or {}).get("depth") == 0, 20)
        relay.stop(sig)
        relay.start()
        wait_for("the agent reconnected", lambda: agent.connections >= 2, 20)
        # The agent re-sends its failure frame when it sees the host connect and in
        # answer to the sync, and keeps reporting the check failed in every heartbeat:
        # the restored cooldown holds.
        time.sleep(4 * INTERVAL + 1.5)
        det = relay.instance(inst).get("detector") or {}
        assert det.get("state") == "cooldown", det
        assert proxy.posts[inst] == 1, relay.log()
        assert len(masakari.notifications_for(inst)) == 1
    finally:
        relay.stop()
        agent.close()


@pytest.mark.slow
@needs_root
def test_frozen_disk_keeps_channels_and_status_answering(tmp_path, proxy, masakari,
                                                          masakari_host) -> None:
    """fsfreeze on state_path: status answers, channels are read, the failure is sent once."""
    inst, other = str(uuid.uuid4()), str(uuid.uuid4())
    with loop_ext4() as fs:
        sock_dir = short_dir()
        state_dir = next(sock_dir)
        os.makedirs(f"{state_dir}/ch")
        relay = RelayProc(tmp_path, fs.path, masakari_host, proxy.url)
        relay.conf.write_text(relay.conf.read_text().replace(
            f"socket_dir = {fs.path}/ch", f"socket_dir = {state_dir}/ch"))
        agent = LevelAgent(f"{state_dir}/ch", inst, INTERVAL, checks={"db": "ok"})
        bystander = LevelAgent(f"{state_dir}/ch", other, INTERVAL, checks={"db": "ok"})
        try:
            relay.start()
            wait_for("armed", lambda: armed_and_stored(relay, inst)
                     and armed_and_stored(relay, other), 20)
            fs.freeze()
            try:
                agent.fail("db", "db exited 1")
                beats = relay.instance(other).get("last_heartbeat_age")
                started = time.monotonic()
                snap = relay.status()
                assert snap, "status did not answer on a frozen disk"
                assert time.monotonic() - started < 3.0
                snap = wait_for("the failure sent straight to masakari",
                                lambda: (s := relay.status()) and s["store"]["sent_directly"]
                                and s, 20)
                assert proxy.posts[inst] == 1
                assert snap["store"]["disk_problem"]["errno_name"] == "FROZEN"
                assert snap["store"]["pending_notifications"] == 1
                assert snap["store"]["sent_directly"] == 1
                # The other channel is still read: its heartbeats stay fresh.
                age = snap["instances"][other]["last_heartbeat_age"]
                assert age is not None and age < 2 * INTERVAL + 1.0, (beats, age)
                shown = subprocess.run(
                    [sys.executable, "-m", "host_relay.cli", "status", "--config-file",
                     str(relay.conf)], capture_output=True, text=True, timeout=30)
                assert "OUTBOX NOT WRITABLE" in shown.stdout and "FROZEN" in shown.stdout
            finally:
                fs.thaw()
            wait_for("written after the thaw",
                     lambda: (relay.status().get("store") or {}).get("pending_notifications")
                     == 0, 20)
            time.sleep(1.5)
            assert proxy.posts[inst] == 1, relay.log()
            assert len(masakari.notifications_for(inst)) == 1
        finally:
            fs.thaw()
            relay.stop()
            agent.close()
            bystander.close()
            next(sock_dir, None)


@pytest.mark.slow
@needs_root
def test_read_only_disk_repaired_across_a_restart_delivers_exactly_once(
        tmp_path, proxy, masakari, masakari_host) -> None:
    """state_path's ext4 turns read-only under the relay; the operator stops the relay,
    repairs and remounts it, starts the relay: the failure reached Masakari once, and
    the decision (delivered, cooldown) is on disk afterwards."""
    inst = str(uuid.uuid4())
    runtime = tmp_path / "run"  # systemd's RuntimeDirectory: a tmpfs that outlives restarts
    with relay_on_ext4(tmp_path, runtime, masakari_host, proxy, inst) as (fs, relay, agent):
        relay.start()
        wait_for("armed", lambda: armed_and_stored(relay, inst), 20)
        fs.error_ro()
        agent.fail("db", "db exited 1")
        snap = wait_for("sent straight to masakari",
                        lambda: (s := relay.status()) and s["store"]["sent_directly"]
                        and s, 20)
        assert snap["store"]["disk_problem"]["errno_name"] == "EROFS"
        assert proxy.posts[inst] == 1
        relay.stop(signal.SIGTERM)  # the operator stops the relay to repair the disk
        assert (runtime / "pending-writes.json").exists()
        fs.repair()  # unmount, fsck, mount read-write again
        relay.start()
        wait_for("the pending writes committed",
                 lambda: not (runtime / "pending-writes.json").exists(), 20)
        wait_for("the agent reconnected", lambda: agent.connections >= 2, 20)
        time.sleep(4 * INTERVAL + 1.5)  # it re-sends the failure; the cooldown holds
        snap = relay.status()
        det = snap["instances"][inst]["detector"]
        assert det["state"] == "cooldown", det
        assert snap["instances"][inst]["last_failure"]["state"] == "delivered"
        assert proxy.posts[inst] == 1, relay.log()
        assert len(masakari.notifications_for(inst)) == 1
