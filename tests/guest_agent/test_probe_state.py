"""The probe tracker: results and beats in, transitions out; no I/O, ``now`` passed in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from guest_agent.checks import FAILED, OK, STARTING
from guest_agent.config import CheckConfig
from guest_agent.probes.notify import parse_datagram
from guest_agent.probes.runners import http_status
from guest_agent.probes.state import ProbeTracker
from tests.guest_agent.conftest import agent_env


def tracker(failures=3, successes=2, kind="http", **kw):
    target = "http://x/" if kind == "http" else "w"
    return ProbeTracker(CheckConfig("c", kind, target, failures=failures, successes=successes,
                                    **kw), 0.0)


def test_failures_in_a_row_fail_and_successes_in_a_row_recover():
    t = tracker()
    assert t.state == STARTING
    assert t.result(True, "HTTP 200 in 0.01 s", 1.0).new == OK  # one is enough at the start
    assert t.result(False, "HTTP 503 in 0.12 s", 2.0) is None
    assert t.result(True, "HTTP 200", 3.0) is None  # the run of failures is broken
    assert t.result(False, "HTTP 503 in 0.12 s", 4.0) is None
    assert t.result(False, "HTTP 503 in 0.12 s", 5.0) is None
    failed = t.result(False, "HTTP 503 in 0.12 s", 6.0)
    assert (failed.old, failed.new, failed.reason) == (OK, FAILED, "HTTP 503 in 0.12 s, 3 in a row")
    assert t.result(False, "connect refused", 7.0) is None and "connect refused" in t.reason
    assert t.result(True, "HTTP 200", 8.0) is None  # successes: 2
    back = t.result(True, "HTTP 200", 9.0)
    assert (back.old, back.new, back.reason) == (FAILED, OK, "")
    assert t.detail(9.5)["good_in_a_row"] == 2 and t.detail(9.5)["last_age"] == 0.5


def test_failures_1_reason_has_no_count():
    t = tracker(failures=1)
    assert t.result(False, "connect refused", 1.0).reason == "connect refused"


def test_reason_fits_the_protocol():
    t = tracker(failures=1)
    assert len(t.result(False, "exit 1: " + "x" * 1000, 1.0).reason.encode()) <= 256


def test_heartbeat_deadline_start_delay_and_status():
    t = tracker(kind="heartbeat", timeout=5.0, start_delay=10.0)
    assert t.beat_deadline() == 15.0
    assert t.check_beat(14.9) is None
    failed = t.check_beat(15.0)
    assert failed.new == FAILED and failed.reason == "no heartbeat since the check started 15 s ago"
    assert t.beat(16.0).new == OK
    t.app_set_status("processed 12 jobs")
    assert t.check_beat(20.9) is None
    assert t.check_beat(21.0).reason == "no heartbeat for 5 s (last STATUS: processed 12 jobs)"
    assert t.check_beat(30.0) is None  # failed once, not again
    assert t.fail_now("the application reported a failure", 31.0) is None  # already failed
    t.beat(32.0)
    assert t.fail_now("the application reported a failure (WATCHDOG=trigger)", 33.0).new == FAILED


def test_sd_notify_datagrams():
    assert parse_datagram(b"WATCHDOG=1\nSTATUS=busy: 3 jobs\n") == {
        "WATCHDOG": "1", "STATUS": "busy: 3 jobs"}
    assert parse_datagram(b"IIM_HEARTBEAT=w") == {"IIM_HEARTBEAT": "w"}
    for bad in (b"", b"\xff\xfe", b"no equals sign", b"=value", b"BAD KEY=1"):
        assert parse_datagram(bad) is None


def test_http_status_line():
    assert http_status(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n") == 200
    assert http_status(b"HTTP/1.0 503 Service Unavailable\r\n") == 503
    assert http_status(b"HTTP/1.1 204\r\n") == 204
    assert http_status(b"HTTP/1.1 302 Found") == 302  # the connection closed after the line
    for bad in (b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 999 What\r\n", b"", b"\x00" * 40):
        with pytest.raises(ValueError, match="not an HTTP answer"):
            http_status(bad)


def test_the_agent_does_not_load_ssl():
    """http.client would import ssl: about 5 MB of RSS the agent has no room for."""
    code = ("import sys, guest_agent.agent, guest_agent.cli; "
            "print(sorted(m for m in ('ssl', 'http.client', 'email.parser') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=agent_env(), timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
