"""sd_notify without libsystemd: the module against real datagram sockets, then a real relay."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid as uuidlib

import pytest

from host_relay import systemd
from host_relay.control import ControlError, request
from tests.host_relay.relay_testing import listen, short_dir

UUIDS = ["8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c11", "8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c12"]


@pytest.fixture
def sock_dir():
    yield from short_dir()


def receiver(path_or_abstract: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path_or_abstract)
    s.settimeout(10)
    return s


def test_notify_sends_one_datagram_to_a_path_socket(sock_dir) -> None:
    path = os.path.join(sock_dir, "notify")
    with receiver(path) as r:
        assert systemd.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path}) is True
        assert r.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_supports_abstract_sockets() -> None:
    name = f"iim-test-{uuidlib.uuid4().hex}"
    with receiver("\0" + name) as r:
        assert systemd.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert r.recv(4096) == b"WATCHDOG=1"


def test_notify_outside_systemd_or_to_a_dead_socket_is_false_not_an_error(sock_dir) -> None:
    assert systemd.notify("READY=1", {}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": ""}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": os.path.join(sock_dir, "none")}) is False
    with pytest.raises(ValueError):
        systemd.notify("STATUS=" + "x" * systemd.MAX_STATE_BYTES, {"NOTIFY_SOCKET": "/x"})


def test_watchdog_interval_follows_sd_watchdog_enabled() -> None:
    me = str(os.getpid())
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": me}) == 0.5
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "5", "WATCHDOG_PID": "me"}) is None


def _conf(tmp_path, state: str) -> str:
    path = tmp_path / "relay.conf"
    path.write_text(
        f"[DEFAULT]\nstate_path = {state}\nhost = compute-sd\nshutdown_grace = 1\n"
        f"[channels]\nsocket_dir = {state}/ch\nreconnect_initial = 0.1\n"
        "[libvirt]\nconnection_uri =\n"
        "[masakari]\nauth_type = none\nendpoint = http://127.0.0.1:9\n"
    )
    return str(path)


def _messages(sock: socket.socket, until: bytes, timeout: float) -> list[bytes]:
    """Datagrams up to and including the first one that starts with ``until``."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except socket.timeout:
            break
        got.append(data)
        if data.startswith(until):
            return got
    raise AssertionError(f"no {until!r} within {timeout}s; got {got}")


def test_a_running_relay_is_ready_after_its_scan_feeds_the_watchdog_and_says_stopping(
        tmp_path, sock_dir) -> None:
    os.makedirs(os.path.join(sock_dir, "ch"))
    guests = [listen(os.path.join(sock_dir, "ch", f"{u}.sock")) for u in UUIDS]
    notify_path = os.path.join(sock_dir, "notify")
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="200000")
    env.pop("WATCHDOG_PID", None)
    with receiver(notify_path) as sd:
        proc = subprocess.Popen(
            [sys.executable, "-m", "host_relay.cli", "run", "--config-file",
             _conf(tmp_path, sock_dir)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            before_ready = _messages(sd, b"READY=1", 20)
            # Readiness comes after the scan: both pre-existing channels are known already.
            ready = before_ready[-1].decode()
            assert ready == f"READY=1\nSTATUS=watching 2 instance channels in {sock_dir}/ch"
            snap = request(os.path.join(sock_dir, "control.sock"), {"cmd": "status"})
            assert sorted(snap["instances"]) == UUIDS

            # WATCHDOG=1 every half interval (0.1 s) from the loop.
            start, beats = time.monotonic(), 0
            while time.monotonic() - start < 1.0:
                sd.settimeout(1.0)
                if sd.recv(4096) == b"WATCHDOG=1":
                    beats += 1
            assert 5 <= beats <= 15, beats

            proc.send_signal(signal.SIGTERM)
            after = _messages(sd, b"STOPPING=1", 10)
            assert after[-1] == b"STOPPING=1\nSTATUS=shutting down"
            out, _ = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for g in guests:
                g.close()
    assert proc.returncode == 0, out
    assert "Traceback" not in out


def test_without_notify_socket_the_relay_runs_as_before(tmp_path, sock_dir) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "host_relay.cli", "run", "--config-file", _conf(tmp_path, sock_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        control = os.path.join(sock_dir, "control.sock")
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "relay did not start"
            try:
                snap = request(control, {"cmd": "status"})
                break
            except ControlError:
                time.sleep(0.05)
        assert snap["restarts"] == {}  # no watchdog task, nothing crashed
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
