"""Issue 13 end to end: the operator's pause through the real `iim-relay` CLI.

The relay runs as a process against a real masakari-api behind a proxy that
counts POSTs; the guest is :class:`LevelAgent` (protocol 0.2: every heartbeat
carries its whole state, including "not paused", which must not end the
host's pause).  Every command is the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.host_relay.faulty_fs import needs_root
from tests.host_relay.relay_testing import CountingProxy, LevelAgent, short_dir
from tests.host_relay.test_restart_e2e import (
    INTERVAL,
    RelayProc,
    armed_and_stored,
    relay_on_ext4,
    wait_for,
)

pytestmark = pytest.mark.masakari

QUIET = 4 * INTERVAL + 1.0  # more than the hang time (3 x 0.5 s) and several heartbeats


def cli(relay: RelayProc, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "host_relay.cli", *args, "--config-file", str(relay.conf)],
        capture_output=True, text=True, timeout=30)


def detector(relay: RelayProc, inst: str) -> dict:
    return relay.instance(inst).get("detector") or {}


@pytest.fixture
def state_dir():
    yield from short_dir()


@pytest.fixture
def proxy(masakari):
    p = CountingProxy(masakari.url)
    yield p
    p.close()


@pytest.fixture
def running(tmp_path, state_dir, proxy, masakari_host):
    inst = str(uuid.uuid4())
    agent = LevelAgent(f"{state_dir}/ch", inst, INTERVAL, checks={"db": "ok"})
    relay = RelayProc(tmp_path, state_dir, masakari_host, proxy.url)
    try:
        relay.start()
        wait_for("the detector armed and stored", lambda: armed_and_stored(relay, inst), 20)
        yield relay, agent, inst
    finally:
        relay.stop()
        agent.close()


@pytest.mark.slow
def test_failure_during_the_host_pause_is_not_notified_and_resume_notifies_once(
        running, proxy, masakari) -> None:
    relay, agent, inst = running
    done = cli(relay, "pause", inst, "--for", "10m", "--reason", "draining host")
    assert done.returncode == 0, done.stderr
    assert f"paused {inst} for 10m" in done.stdout and "draining host" in done.stdout
    assert detector(relay, inst)["state"] == "paused"
    agent.fail("db", "db exited 1")  # a process killed during the pause
    time.sleep(QUIET)  # its heartbeats say "failed" and "not paused" all along
    assert proxy.posts.get(inst, 0) == 0, relay.log()
    det = detector(relay, inst)
    assert det["state"] == "paused" and det["host_pause"]["reason"] == "draining host"
    assert det["pause"] is None  # the guest's own: none
    assert 500 < det["host_pause"]["remaining"] <= 600

    shown = cli(relay, "status", inst)
    assert shown.returncode == 0, shown.stderr
    assert "paused (host):" in shown.stdout and "draining host" in shown.stdout
    assert "db failed" in shown.stdout and "Notifications: none" in shown.stdout
    overview = cli(relay, "status")
    assert "paused (host," in overview.stdout, overview.stdout

    done = cli(relay, "resume", inst)
    assert done.returncode == 0, done.stderr
    assert f"resumed {inst}" in done.stdout
    # The check is still failed: the next heartbeat notifies, once.
    wait_for("the notification", lambda: proxy.posts.get(inst), 10)
    wait_for("it in masakari", lambda: masakari.notifications_for(inst), 10)
    time.sleep(QUIET)
    assert proxy.posts[inst] == 1, relay.log()
    shown = wait_for("status INSTANCE with Masakari's answer",
                     lambda: (s := cli(relay, "status", inst)) and "accepted (HTTP" in s.stdout
                     and s, 10)
    assert "process_failure: check db reported failed by a heartbeat" in shown.stdout
    assert "paused:         no" in shown.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_the_host_pause_survives_a_relay_restart(running, proxy, sig) -> None:
    relay, agent, inst = running
    done = cli(relay, "pause", inst, "--for", "300", "--reason", "fixing the instance")
    assert done.returncode == 0, done.stderr  # 0: the pause is on disk
    relay.stop(sig)
    agent.fail("db", "db exited 1")  # while the relay is down
    relay.start()
    wait_for("the agent reconnected", lambda: agent.connections >= 2, 20)
    time.sleep(QUIET)
    det = detector(relay, inst)
    assert det.get("state") == "paused", (det, relay.log())
    assert det["host_pause"]["reason"] == "fixing the instance"
    assert 200 < det["host_pause"]["remaining"] <= 300
    assert proxy.posts.get(inst, 0) == 0, relay.log()
    done = cli(relay, "resume", inst)
    assert done.returncode == 0, done.stderr
    wait_for("the failure notified after the resume", lambda: proxy.posts.get(inst), 10)
    time.sleep(QUIET)
    assert proxy.posts[inst] == 1


@pytest.mark.slow
def test_refusals_name_the_bound_and_the_instance(running, proxy) -> None:
    relay, agent, inst = running
    too_long = cli(relay, "pause", inst, "--for", "2h")  # max_pause defaults to 1h
    assert too_long.returncode == 2, too_long
    assert "max_pause" in too_long.stderr and "1h" in too_long.stderr
    assert "Traceback" not in too_long.stderr
    assert detector(relay, inst)["host_pause"] is None
    unknown = cli(relay, "pause", "no-such-instance", "--for", "10m")
    assert unknown.returncode == 1 and "no instance 'no-such-instance'" in unknown.stderr
    assert cli(relay, "resume", "no-such-instance").returncode == 1
    assert cli(relay, "status", "no-such-instance").returncode == 1
    bad = cli(relay, "pause", inst, "--for", "5 minutes")
    assert bad.returncode == 2 and "units" in bad.stderr, bad.stderr
    nothing = cli(relay, "resume", inst)
    assert nothing.returncode == 0 and "had no host pause" in nothing.stdout
    shown = cli(relay, "status", inst, "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["uuid"] == inst and detail["max_pause"] == 3600.0
    assert detail["notifications"] == [] and detail["notifications_error"] is None
    assert detail["instance"]["detector"]["state"] == "armed"
    assert detail["instance"]["channel"]["state"] == "connected"


@pytest.mark.slow
@needs_root
def test_a_pause_the_disk_refuses_says_so_and_is_written_after_the_repair(
        tmp_path, proxy, masakari_host) -> None:
    """state_path's ext4 turns read-only: `pause` holds in memory, exits 1 and says why;
    the operator stops the relay, repairs the disk, starts it: the pause is on disk and
    holds (the failure the guest reports meanwhile is not notified)."""
    inst = str(uuid.uuid4())
    runtime = tmp_path / "run"  # systemd's RuntimeDirectory: outlives relay restarts
    with relay_on_ext4(tmp_path, runtime, masakari_host, proxy, inst) as (fs, relay, agent):
        relay.start()
        wait_for("armed", lambda: armed_and_stored(relay, inst), 20)
        fs.error_ro()
        done = cli(relay, "pause", inst, "--for", "10m", "--reason", "disk swap")
        assert done.returncode == 1, done
        assert f"paused {inst}" in done.stdout
        assert "NOT yet on disk" in done.stderr and "read-only" in done.stderr, done.stderr
        assert detector(relay, inst)["state"] == "paused"
        relay.stop(signal.SIGTERM)  # the operator stops the relay to repair the disk
        fs.repair()
        agent.fail("db", "db exited 1")
        relay.start()
        wait_for("the agent reconnected", lambda: agent.connections >= 2, 20)
        time.sleep(QUIET)
        det = detector(relay, inst)
        assert det["state"] == "paused" and det["host_pause"]["reason"] == "disk swap", det
        assert proxy.posts.get(inst, 0) == 0, relay.log()
        assert (relay.status().get("store") or {}).get("pending_records") == 0
