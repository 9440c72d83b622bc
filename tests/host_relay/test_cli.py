"""The iim-relay command: `run` as a real subprocess, `status` against it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from host_relay.cli import cli
from iim_protocol.codec import encode
from iim_protocol.messages import Heartbeat, Hello
from tests.host_relay.relay_testing import short_dir

UUID = "8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c01"


@pytest.fixture
def state_dir():
    yield from short_dir()


def write_conf(tmp_path, state_dir: str, channels_extra: str = "") -> str:
    path = tmp_path / "iim-relay.conf"
    path.write_text(
        "[DEFAULT]\n"
        f"state_path = {state_dir}\n"
        "host = compute-cli\n"
        "shutdown_grace = 2\n"
        "[channels]\n"
        f"socket_dir = {state_dir}/ch\n"
        "reconnect_initial = 0.1\n" + channels_extra +
        "[libvirt]\n"
        "connection_uri =\n"
        "[masakari]\n"
        "auth_type = none\n"
        "endpoint = http://127.0.0.1:9\n"
    )
    return str(path)


def relay_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "host_relay.cli", *args]


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.02)


def test_help_reads_like_a_man_page() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "run" in result.output and "status" in result.output
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output


def test_status_without_a_relay_is_a_clear_error(tmp_path, state_dir) -> None:
    conf = write_conf(tmp_path, state_dir)
    result = subprocess.run(relay_cmd("status", "--config-file", conf),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    sock = os.path.join(state_dir, "control.sock")
    assert result.stderr.strip() == (
        f"iim-relay: no iim-relay is running (control socket {sock}: No such file or directory)"
    )
    assert "Traceback" not in result.stderr


def test_run_with_a_bad_value_exits_2_with_the_message(tmp_path, state_dir) -> None:
    conf = write_conf(tmp_path, state_dir, "max_frames_per_second = 5\n")
    result = subprocess.run(relay_cmd("run", "--config-file", conf),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "iim-relay: configuration error:" in result.stderr
    assert "[channels] max_frames_per_second = 5" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(state_dir, "control.sock"))


def test_sigterm_stops_a_running_relay_in_order(tmp_path, state_dir) -> None:
    conf = write_conf(tmp_path, state_dir, "reconect_max = 5\n")  # misspelt: a warning
    os.makedirs(os.path.join(state_dir, "ch"))
    guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    guest.bind(os.path.join(state_dir, "ch", f"{UUID}.sock"))
    guest.listen(1)
    guest.settimeout(10)
    proc = subprocess.Popen(relay_cmd("run", "--config-file", conf),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        conn, _ = guest.accept()  # the relay found the socket and connected
        conn.sendall(encode(Hello(protocol_version=1, agent_version="1", boot_id="b",
                                  heartbeat_interval=5.0)) + encode(Heartbeat(seq=1)))
        control = os.path.join(state_dir, "control.sock")
        wait_for(lambda: os.path.exists(control), 10)

        runner = CliRunner()
        wait_for(lambda: '"armed"' in runner.invoke(
            cli, ["status", "--control-socket", control, "--json"]).output, 5)
        result = runner.invoke(cli, ["status", "--control-socket", control])
        assert result.exit_code == 0, result.output
        assert re.search(rf"{UUID}\s+connected\s+socket_dir\s+\d+\.\ds\s+armed\s+-\s+-",
                         result.output)
        assert "Outbox: 0 queued" in result.output
        # The misspelt option stays visible after start-up, with the fix.
        assert "Configuration warnings" in result.output
        assert "reconect_max" in result.output and "reconnect_max" in result.output
        snap = json.loads(runner.invoke(
            cli, ["status", "--control-socket", control, "--json"]).output)
        assert snap["instances"][UUID]["channel"]["state"] == "connected"
        assert any("reconect_max" in w for w in snap["config_warnings"])

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        guest.close()
    assert proc.returncode == 0, out
    order = [
        "Received SIGTERM",
        "Shutdown 1/6: stopping discovery",
        "Shutdown 2/6: closing 1 channels",
        "Shutdown 3/6: writing 0 pending notifications and records",
        "Shutdown 4/6: stopping the sender",
        "masakari sender stopped",
        "Shutdown 5/6: closing the control socket",
        "Shutdown 6/6: closing the outbox",
        "iim-relay stopped",
    ]
    positions = [out.find(line) for line in order]
    assert all(p >= 0 for p in positions), out
    assert positions == sorted(positions), out
    assert "Traceback" not in out
    assert not os.path.exists(os.path.join(state_dir, "control.sock"))


def test_format_status_lists_failures_and_rejected_input() -> None:
    from host_relay.cli import format_status

    snap = {
        "version": "0.1.0", "host": "h", "pid": 1, "uptime": 5.0, "socket_dir": "/d",
        "instances": {UUID: {
            "channel": {"state": "backoff", "next_retry_in": 1.5},
            "origin": "hotplug",
            "last_heartbeat_age": None,
            "detector": {"state": "cooldown"},
            "last_failure": {"kind": "guest_hang", "age": 30.0, "state": "delivered"},
            "decoder": {"bytes_skipped": 12, "frames_rejected": 2,
                        "rejected": {"bad_crc": 2}},
            "throttle": {"bytes": 0, "frames": 0, "seconds": 0.0},
        }},
        "outbox": {"depth": 0, "oldest_queued_age": 0.0, "dead": 1, "retrying": 0},
        "ignored_files": ["junk.sock"],
    }
    text = format_status(snap)
    assert re.search(rf"{UUID}\s+backoff \(retry 1.5s\)\s+hotplug\s+-\s+cooldown"
                     r"\s+guest_hang 30.0s ago\s+delivered", text)
    assert "1 dead letters" in text
    assert "12 bytes skipped, 2 frames rejected (bad_crc=2)" in text
    assert "junk.sock" in text
