"""Issue 13 with a real libvirtd: INSTANCE may be the libvirt domain's name.

The relay runs as ``iim-relay run`` against the fixture's libvirtd (as in
test_libvirt_relay.py) and hot-plugs the domain's channel; the operator then
pauses, inspects and resumes the instance by its domain name through the CLI.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.host_relay.test_libvirt_relay import (  # noqa: F401 - relays is a fixture
    hotplugged_and_connected,
    new_spec,
    relays,
)

pytestmark = pytest.mark.libvirt


def cli(relay, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "host_relay.cli", *args, "--control-socket",
         relay.control_socket], capture_output=True, text=True, timeout=30)


def test_pause_status_and_resume_by_domain_name(libvirt_domains, relays) -> None:  # noqa: F811
    daemon, domains = libvirt_domains
    spec = new_spec()
    domains.append(daemon.start_domain(spec))
    relay = relays().start()
    entry = relay.wait_instance(spec.uuid, hotplugged_and_connected, "hot-plugged channel")

    done = cli(relay, "pause", spec.name, "--for", "10m", "--reason", "host drain")
    assert done.returncode == 0, done.stderr + relay.log()
    assert f"paused {spec.uuid} ({spec.name}) for 10m" in done.stdout
    assert relay.instance(spec.uuid)["detector"]["host_pause"]["reason"] == "host drain"

    shown = cli(relay, "status", spec.name)
    assert shown.returncode == 0, shown.stderr
    assert f"Instance {spec.uuid} ({spec.name})" in shown.stdout
    assert "origin:         hotplug" in shown.stdout
    assert f"path:           {entry['channel']['path']}" in shown.stdout
    assert "domain:         running" in shown.stdout
    assert "paused (host):  for 10m" in shown.stdout or "paused (host):  for 9m" in shown.stdout

    done = cli(relay, "resume", spec.name)
    assert done.returncode == 0 and f"resumed {spec.uuid} ({spec.name})" in done.stdout
    assert relay.instance(spec.uuid)["detector"]["host_pause"] is None
