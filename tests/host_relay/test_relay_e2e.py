"""iim-relay as a real process against a real masakari-api.

The promise under test: a failure that reached the outbox is delivered, even
when masakari-api is down and the relay is killed with SIGKILL meanwhile.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from host_relay import control
from iim_protocol.codec import encode
from iim_protocol.messages import Failure, Hello
from tests.host_relay.relay_testing import short_dir

INSTANCE = "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
OTHER = "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4e"  # the masakari-api is shared by the tests

pytestmark = pytest.mark.masakari


@pytest.fixture
def state_dir():
    yield from short_dir()


def wait_for(what, predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def start_relay(conf: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "host_relay.cli", "run", "--config-file", conf],
                            stdout=log, stderr=subprocess.STDOUT)


def status(state_dir: str) -> dict:
    try:
        return control.request(os.path.join(state_dir, "control.sock"), {"cmd": "status"}, 2.0)
    except control.ControlError:
        return {}


def write_conf(tmp_path, state_dir: str, host: str, url: str) -> str:
    conf = tmp_path / "iim-relay.conf"
    conf.write_text(
        "[DEFAULT]\n"
        f"host = {host}\n"
        f"state_path = {state_dir}\n"
        "[channels]\n"
        f"socket_dir = {state_dir}/ch\n"
        "reconnect_initial = 0.1\n"
        "[libvirt]\n"
        "connection_uri =\n"
        "[masakari]\n"
        "auth_type = none\n"
        f"endpoint = {url}\n"
        "backoff_initial = 0.2\n"
        "backoff_max = 1\n"
    )
    return str(conf)


def guest_socket(state_dir: str, instance: str = INSTANCE) -> socket.socket:
    """Plays QEMU's chardev for the instance: the relay connects to it."""
    os.makedirs(f"{state_dir}/ch", exist_ok=True)
    guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    guest.bind(f"{state_dir}/ch/{instance}.sock")
    guest.listen(1)
    guest.settimeout(10)
    return guest


FAILURE_FRAMES = (encode(Hello(protocol_version=1, agent_version="t", boot_id="b",
                               heartbeat_interval=1.0))
                  + encode(Failure(seq=1, check="db", reason="exited")))


@pytest.mark.slow
def test_queued_notification_survives_sigkill_and_outage(tmp_path, state_dir, masakari,
                                                         masakari_host) -> None:
    conf = write_conf(tmp_path, state_dir, masakari_host, masakari.url)
    guest = guest_socket(state_dir)
    log = open(tmp_path / "relay.log", "ab")  # noqa: SIM115
    masakari.stop()  # Masakari is down when the failure happens
    relay = start_relay(conf, log)
    try:
        conn, _ = guest.accept()
        conn.sendall(FAILURE_FRAMES)
        snap = wait_for("a retried outbox entry",
                        lambda: (s := status(state_dir)) and s["outbox"]["retrying"] >= 1 and s,
                        15)
        assert snap["outbox"]["depth"] == 1
        assert snap["instances"][INSTANCE]["last_failure"]["state"] == "queued"

        relay.send_signal(signal.SIGKILL)
        relay.wait(timeout=10)
        conn.close()
        masakari.start()
        relay = start_relay(conf, log)

        found = wait_for("the notification in masakari",
                         lambda: masakari.notifications_for(INSTANCE), 30)
        snap = wait_for("the entry marked delivered",
                        lambda: (s := status(state_dir)) and s["outbox"]["depth"] == 0 and s, 10)
        assert snap["sender"]["delivered"] == 1  # by the restarted relay
        assert snap["outbox"]["delivered"] == 1
        time.sleep(1.0)  # any duplicate send would have landed by now
        found = masakari.notifications_for(INSTANCE)
        assert len(found) == 1
        assert found[0]["payload"] == {"event": "LIFECYCLE", "instance_uuid": INSTANCE,
                                       "vir_domain_event": "STOPPED_FAILED"}
        assert found[0]["type"] == "VM"
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(timeout=10)
        except subprocess.TimeoutExpired:
            relay.kill()
        guest.close()
        log.close()


@pytest.mark.slow
def test_dead_letter_is_shown_and_requeued_after_the_fix(tmp_path, state_dir, masakari,
                                                         masakari_host) -> None:
    masakari.set_maintenance(masakari_host, True)
    conf = write_conf(tmp_path, state_dir, masakari_host, masakari.url)
    guest = guest_socket(state_dir, OTHER)
    log = open(tmp_path / "relay.log", "ab")  # noqa: SIM115
    relay = start_relay(conf, log)
    try:
        conn, _ = guest.accept()
        conn.sendall(FAILURE_FRAMES)
        snap = wait_for("a dead letter", lambda: (s := status(state_dir))
                        and s.get("dead_letters") and s, 15)
        (dead,) = snap["dead_letters"]
        assert dead["instance_uuid"] == OTHER and dead["last_status"] == 409
        assert "maintenance" in dead["last_error"]
        shown = subprocess.run([sys.executable, "-m", "host_relay.cli", "status",
                                "--config-file", conf], capture_output=True, text=True,
                               timeout=30)
        assert f"#{dead['id']} {OTHER}" in shown.stdout and "requeue" in shown.stdout
        assert masakari.notifications_for(OTHER) == []

        masakari.set_maintenance(masakari_host, False)  # the operator fixes the cause
        done = subprocess.run([sys.executable, "-m", "host_relay.cli", "requeue", "--all",
                               "--config-file", conf], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        assert f"re-queued: {dead['id']}" in done.stdout
        found = wait_for("the notification in masakari",
                         lambda: masakari.notifications_for(OTHER), 15)
        assert len(found) == 1
        again = subprocess.run([sys.executable, "-m", "host_relay.cli", "requeue",
                                str(dead["id"]), "--config-file", conf],
                               capture_output=True, text=True, timeout=30)
        assert again.returncode == 2 and "not dead letters" in again.stdout
        conn.close()
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(timeout=10)
        except subprocess.TimeoutExpired:
            relay.kill()
        guest.close()
        log.close()
