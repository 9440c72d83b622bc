"""`iim-relay run` refuses a configuration it cannot deliver with: exit 2, one line, no traceback.

Each test runs the real command, as systemd would, and checks what reaches the journal (stderr).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import iim_protocol
from tests.host_relay.relay_testing import short_dir

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "etc" / "iim-relay.conf.sample"
FIX = "for a masakari-api without Keystone set auth_type = none and endpoint = http://"


@pytest.fixture
def state_dir():
    yield from short_dir()


def relay(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "host_relay.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path: Path, state_dir: str, masakari: str, default: str = "") -> str:
    path = tmp_path / "relay.conf"
    path.write_text(f"[DEFAULT]\nstate_path = {state_dir}\n{default}"
                    f"[channels]\nsocket_dir = {state_dir}/ch\n"
                    f"[libvirt]\nconnection_uri =\n{masakari}")
    return str(path)


def refused(path: str) -> str:
    """Run the relay on ``path``; it must exit 2 at once with one line on stderr."""
    started = time.monotonic()
    result = relay("run", "--config-file", path)
    took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"iim-relay: configuration error: {path}: ")
    assert took < 20  # "at once": it never waits for a delivery attempt
    return lines[0]


def test_the_packaged_all_commented_file_is_refused(tmp_path) -> None:
    # What packaging/build installs as /etc/iim/relay.conf: the sample, every option commented.
    path = tmp_path / "relay.conf"
    path.write_text("# /etc/iim/relay.conf\n\n" + SAMPLE.read_text())
    message = refused(str(path))
    assert ("[masakari] auth_type = password (the default) needs auth_url, username and "
            "password, so iim-relay cannot reach masakari-api") in message
    assert FIX in message


@pytest.mark.parametrize(("masakari", "needs"), [
    ("", "auth_type = password (the default) needs auth_url, username and password"),
    ("[masakari]\nauth_type = password\nauth_url = http://k:5000/v3\n",
     "auth_type = password needs username and password"),
    ("[masakari]\nauth_type = password\nauth_url = http://k:5000/v3\nusername = m\n",
     "auth_type = password needs password"),
    ("[masakari]\nauth_type = none\n", "auth_type = none needs endpoint"),
    ("[masakari]\nauth_type =\n", "auth_type is not set"),
])
def test_a_masakari_group_without_usable_credentials_is_refused(
        tmp_path, state_dir, masakari, needs) -> None:
    path = write(tmp_path, state_dir, masakari)
    message = refused(path)
    assert f"[masakari] {needs}" in message
    assert FIX in message
    assert not os.path.exists(os.path.join(state_dir, "control.sock"))


def test_a_log_file_that_cannot_be_opened_is_a_configuration_error(tmp_path, state_dir) -> None:
    path = write(tmp_path, state_dir, "[masakari]\nauth_type = none\nendpoint = http://127.0.0.1:9\n",
                 default=f"log_file = {tmp_path}/missing/relay.log\n")
    message = refused(path)
    assert f"[DEFAULT] log_file {tmp_path}/missing/relay.log cannot be opened" in message
    assert "create its directory" in message


def test_version_short_and_long() -> None:
    for flag in ("-V", "--version"):
        result = relay(flag)
        assert result.returncode == 0
        assert result.stdout.strip() == f"iim-relay, version {iim_protocol.__version__}"


def test_debug_flag_logs_debug_messages(tmp_path, state_dir) -> None:
    path = write(tmp_path, state_dir, "[masakari]\nauth_type = none\nendpoint = http://127.0.0.1:9\n")
    os.makedirs(os.path.join(state_dir, "ch"))
    control = os.path.join(state_dir, "control.sock")
    outputs = {}
    for flags in ((), ("--debug",)):
        proc = subprocess.Popen([sys.executable, "-m", "host_relay.cli", "run", "--config-file",
                                 path, *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(control) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert os.path.exists(control), "the relay did not start"
            proc.send_signal(signal.SIGTERM)
            outputs[flags], _ = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, outputs.get(flags)
    assert " DEBUG " not in outputs[()]
    assert " DEBUG " in outputs[("--debug",)]
