"""Issue 13 with the real agent: a watched process killed (kill -9) during the host pause.

Every part is real: masakari-api (behind a proxy counting POSTs), ``iim-relay
run``, ``iim-agent run`` watching a real process, and the pty bridge that
stands in for QEMU's virtio-serial chardev (devtools.ptybridge, as the demo
uses it).  The operator's commands are the real CLI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.host_relay.relay_testing import CountingProxy, short_dir
from tests.host_relay.test_restart_e2e import RelayProc, wait_for

pytestmark = pytest.mark.masakari

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
QUIET = 5.0  # several 1 s heartbeats saying "failed" and "not paused"


@pytest.fixture
def state_dir():
    yield from short_dir()


@pytest.mark.slow
def test_process_killed_during_the_host_pause_is_notified_once_after_resume(
        tmp_path, state_dir, masakari, masakari_host) -> None:
    inst = str(uuid.uuid4())
    proxy = CountingProxy(masakari.url)
    relay = RelayProc(tmp_path, state_dir, masakari_host, proxy.url)
    procs: list[subprocess.Popen] = []

    def spawn(argv: list, log: str) -> subprocess.Popen:
        with open(tmp_path / log, "ab") as out:
            procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL,
                                          env=dict(os.environ, PYTHONPATH=str(ROOT))))
        return procs[-1]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "iim-relay"), *args, "--config-file",
                               str(relay.conf)], capture_output=True, text=True, timeout=30)

    try:
        os.makedirs(f"{state_dir}/ch")
        relay.start()
        port = tmp_path / "org.openstack.iim.0"
        spawn([sys.executable, "-m", "devtools.ptybridge", "--socket",
               f"{state_dir}/ch/{inst}.sock", "--link", str(port)], "bridge.log")
        wait_for("the relay on the channel",
                 lambda: "host connected" in (tmp_path / "bridge.log").read_text(), 30)
        app = tmp_path / f"iim-hp-{inst[:8]}"  # a name only this test's process has
        shutil.copy(shutil.which("sleep") or "/bin/sleep", app)
        victim = spawn([str(app), "100000"], "app.log")
        agent_conf = tmp_path / "agent.yaml"
        agent_conf.write_text(
            f"port: {port}\n"
            "heartbeat_interval: 1s\n"
            f"control_socket: {state_dir}/agent.sock\n"
            "checks:\n"
            f"  - name: app\n"
            f"    process: {app.name}\n"
            "    grace: 0\n")
        spawn([str(BIN / "iim-agent"), "run", "-c", str(agent_conf)], "agent.log")
        wait_for("the detector armed",
                 lambda: (relay.instance(inst).get("detector") or {}).get("state") == "armed",
                 60)

        done = cli("pause", inst, "--for", "10m", "--reason", "host drain")
        assert done.returncode == 0, done.stderr
        victim.kill()  # kill -9 of the watched process, inside the pause
        victim.wait(10)
        wait_for("the agent reporting the check failed",
                 lambda: ((relay.instance(inst).get("detector") or {}).get("checks") or {})
                 .get("app") == "failed", 20)
        time.sleep(QUIET)
        assert proxy.posts.get(inst, 0) == 0, relay.log()
        assert not masakari.notifications_for(inst)
        assert relay.instance(inst)["detector"]["state"] == "paused"

        assert cli("resume", inst).returncode == 0
        wait_for("the notification in masakari", lambda: masakari.notifications_for(inst), 20)
        time.sleep(QUIET)
        assert proxy.posts[inst] == 1, relay.log()
        assert len(masakari.notifications_for(inst)) == 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        relay.stop()
        proxy.close()
