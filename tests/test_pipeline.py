"""The whole pipeline, as the README's demo runs it: agent -> pty -> relay -> masakari-api."""

from __future__ import annotations

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
