"""The whole pipeline, as the README's demo runs it: agent -> pty -> relay -> masakari-api."""

from __future__ import annotations

import time

import pytest

from devtools.demo import Demo

pytestmark = pytest.mark.masakari


def test_killed_process_reaches_masakari(tmp_path, capsys) -> None:
    demo = Demo(tmp_path)
    try:
        elapsed = demo.run()
        found = demo.server.notifications_for(demo.instance)
    finally:
        demo.cleanup()
    assert len(found) == 1
    assert found[0]["payload"] == {"event": "LIFECYCLE", "instance_uuid": demo.instance,
                                   "vir_domain_event": "STOPPED_FAILED"}
    assert found[0]["type"] == "VM"
    assert found[0]["source_host_uuid"] == demo.server.hosts[demo.host]
    assert elapsed < 10.0  # a correctness bound, not a benchmark (bench/ measures latency)
    out = capsys.readouterr().out
    assert "detector armed" in out and "STOPPED_FAILED" in out


@pytest.mark.slow
def test_stopped_http_server_reaches_masakari_once(tmp_path, capsys) -> None:
    """The meltdown: a SIGSTOPped web server, probed by the agent, through the unchanged relay."""
    demo = Demo(tmp_path, meltdown=True)
    try:
        elapsed = demo.run()
        time.sleep(3.0)  # more heartbeats and frames after the failure: still one record
        found = demo.server.notifications_for(demo.instance)
        relay_log = (tmp_path / "iim-relay.log").read_text()
    finally:
        demo.cleanup()
    assert len(found) == 1
    assert found[0]["payload"] == {"event": "LIFECYCLE", "instance_uuid": demo.instance,
                                   "vir_domain_event": "STOPPED_FAILED"}
    # 2 failed probes 1 s apart, 0.5 s timeout each: about 1.5-2.5 s before the frame leaves
    assert 1.4 <= elapsed < 10.0
    # The probe's own words reach the relay's log
    assert "demo-web" in relay_log and "timed out after 0.5 s" in relay_log, relay_log[-2000:]
    out = capsys.readouterr().out
    assert "freezing the demo web server" in out and "demo-web" in out
