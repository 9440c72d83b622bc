"""iim-relay on "stock Nova": it finds instances through libvirtd and hot-plugs their channel.

Each test runs ``iim-relay run`` as a subprocess (as the systemd unit does)
with ``[libvirt] connection_uri`` pointing at the private session daemon of
the ``libvirtd`` fixture, and reads the relay's state through its control
socket, as ``iim-relay status --json`` does.  The domains are QEMU/TCG
without a guest OS, so nothing writes into the virtio port: what is checked
is what the host sees (the live XML, the socket, the relay's connection, the
domain state).  The serial fallback has a guest that writes: the boot sector
of serial_guest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest

from host_relay import control
from iim_protocol.messages import Failure
from tests.host_relay.libvirt_fixture import IIM_CHANNEL, DomainSpec, LibvirtDaemon
from tests.host_relay.serial_guest import agent_stream, boot_image

pytestmark = pytest.mark.libvirt

WAIT = 20.0  # the relay starts, connects to libvirtd, attaches: a few seconds under load
STOP_TIMEOUT = 15.0


class RelayProcess:
    """``iim-relay run`` against the fixture's libvirtd; its output goes to a log file."""

    def __init__(self, daemon: LibvirtDaemon, tmp_path, host: str = "compute-libvirt",
                 endpoint: str = "http://127.0.0.1:9", **libvirt_opts: str) -> None:
        self.daemon = daemon
        self.state_dir = daemon.socket_dir("st")  # short: the control socket lives here
        # For static channels only: hot-plugged ones live in libvirt's own directory.
        self.socket_dir = os.path.join(self.state_dir, "ch")
        os.mkdir(self.socket_dir, 0o755)
        self.log_path = str(tmp_path / f"relay-{os.path.basename(self.state_dir)}.log")
        opts = {"connection_uri": daemon.uri, "socket_owner": "nobody",
                "socket_group": "nogroup", "reconnect_initial": "0.2",
                "reconnect_max": "2", **libvirt_opts}
        self.conf = tmp_path / f"relay-{os.path.basename(self.state_dir)}.conf"
        self.conf.write_text(
            "[DEFAULT]\n"
            f"state_path = {self.state_dir}\n"
            f"host = {host}\n"
            "shutdown_grace = 2\n"
            "[channels]\n"
            f"socket_dir = {self.socket_dir}\n"
            "reconnect_initial = 0.1\n"
            "reconnect_max = 1\n"
            "[masakari]\n"
            "auth_type = none\n"
            f"endpoint = {endpoint}\n"
            "[libvirt]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
        )
        self.proc: subprocess.Popen | None = None

    @property
    def control_socket(self) -> str:
        return os.path.join(self.state_dir, "control.sock")

    def start(self) -> RelayProcess:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "host_relay.cli", "run", "--config-file", str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._answers, WAIT, lambda: f"relay not answering; log:\n{self.log()}")
        return self

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"relay exited {self.proc.returncode}:\n{self.log()}"
        try:
            control.request(self.control_socket, {"cmd": "status"}, 2.0)
            return True
        except (OSError, control.RelayNotRunning):
            return False

    def stop(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
                raise AssertionError(f"relay ignored SIGTERM:\n{self.log()}") from None
        return self.log()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def status(self) -> dict:
        return control.request(self.control_socket, {"cmd": "status"}, 5.0)

    def instance(self, uuid: str) -> dict | None:
        return self.status()["instances"].get(uuid)

    def wait_instance(self, uuid: str, predicate, what: str) -> dict:
        """Poll status until ``predicate(entry)`` holds for ``uuid``'s entry; returns it."""
        seen: list = [None]

        def check() -> bool:
            seen[0] = self.instance(uuid)
            return seen[0] is not None and bool(predicate(seen[0]))

        wait_for(check, WAIT,
                 lambda: f"{what}: not within {WAIT}s; last status {seen[0]}\n{self.log()}")
        return seen[0]


@pytest.fixture
def relays(libvirtd, tmp_path):
    """Make relays with ``relays(**libvirt_opts)``; all are stopped after the test."""
    made: list[RelayProcess] = []

    def make(**opts: str) -> RelayProcess:
        made.append(RelayProcess(libvirtd, tmp_path, **opts))
        return made[-1]

    yield make
    for relay in made:
        relay.stop()


def wait_for(predicate, timeout: float, message) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message())
        time.sleep(0.1)


def new_spec(**kw) -> DomainSpec:
    u = str(uuidlib.uuid4())
    return DomainSpec(name=f"r-{u[:8]}", uuid=u, **kw)


def iim_channels(dom) -> list[str]:
    """Source paths of every org.openstack.iim.0 channel in the live XML."""
    root = ET.fromstring(dom.XMLDesc(0))
    return [ch.find("source").get("path") for ch in root.findall("./devices/channel")
            if ch.find("target").get("name") == IIM_CHANNEL]


def libvirt_channel_path(daemon: LibvirtDaemon, dom, spec: DomainSpec) -> str:
    """Where the session libvirtd puts a path-less channel of the running domain."""
    return os.path.join(daemon.home, ".config", "libvirt", "qemu", "channel", "target",
                        f"domain-{dom.ID()}-{spec.name}", IIM_CHANNEL)


def socket_has_client(path: str) -> bool:
    """Some process is connected to the listening UNIX socket at ``path`` (from ss)."""
    out = subprocess.run(["ss", "-xHn", "state", "connected"], capture_output=True,
                         text=True, timeout=10).stdout
    return any(path in line.split() for line in out.splitlines())


def connected(entry: dict) -> bool:
    return (entry.get("channel") or {}).get("state") == "connected"


def hotplugged_and_connected(entry: dict) -> bool:
    return entry.get("origin") == "hotplug" and connected(entry)


def domain_state(entry: dict) -> str | None:
    """The domain state the detector works with (instances with a channel)."""
    return (entry.get("detector") or {}).get("domain")


def test_running_domain_gets_the_channel_and_the_relay_connects(
        libvirt_domains, relays) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec()
    dom = daemon.start_domain(spec)
    domains.append(dom)
    # socket_dir stays root's: hot-plug needs no directory the QEMU user may write.
    relay = relays(socket_owner="root", socket_group="root").start()

    entry = relay.wait_instance(spec.uuid, hotplugged_and_connected, "hot-plugged channel")
    (path,) = iim_channels(dom)
    # The path libvirt chose, in its channel target directory, is the one the relay reads.
    assert path == libvirt_channel_path(daemon, dom, spec)
    assert entry["libvirt"]["path"] == path, entry
    assert domain_state(entry) == "running"
    # Live only: Nova owns the persistent definition.
    persistent = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert IIM_CHANNEL not in {t.get("name") for t in persistent.iter("target")}
    st = os.stat(relay.socket_dir)
    assert st.st_uid == 0 and os.listdir(relay.socket_dir) == []
    # The relay is the channel's one client: QEMU's socket has a peer connected.
    assert socket_has_client(path)

    # What an operator sees.
    out = subprocess.run(
        [sys.executable, "-m", "host_relay.cli", "status", "--control-socket",
         relay.control_socket, "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)["instances"][spec.uuid]
    assert shown["origin"] == "hotplug" and shown["channel"]["state"] == "connected"


@pytest.mark.slow
def test_channel_is_attached_again_after_domain_and_relay_restarts_never_twice(
        libvirt_domains, relays) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec()
    dom = daemon.start_domain(spec)
    domains.append(dom)
    relay = relays().start()
    entry = relay.wait_instance(spec.uuid, hotplugged_and_connected, "first attach")
    assert iim_channels(dom) == [libvirt_channel_path(daemon, dom, spec)]
    assert entry["libvirt"]["path"] == libvirt_channel_path(daemon, dom, spec)

    # Nova stops and starts the instance (or Masakari restarts it): a new QEMU, no channel.
    dom.destroy()
    relay.wait_instance(spec.uuid, lambda e: e["domain_state"] == "shutoff", "shut off seen")
    dom.create()
    path = libvirt_channel_path(daemon, dom, spec)  # a new domain id: a new directory
    entry = relay.wait_instance(spec.uuid, lambda e: hotplugged_and_connected(e)
                                and domain_state(e) == "running"
                                and e["libvirt"]["path"] == path, "attach after domain restart")
    assert iim_channels(dom) == [path]

    # The relay restarts while the domain keeps its channel: adopt it, attach nothing.
    first_log = relay.stop()
    relay.start()
    entry = relay.wait_instance(spec.uuid, connected, "reconnect after relay restart")
    assert iim_channels(dom) == [path]
    assert entry["origin"] == "hotplug"
    assert entry["libvirt"]["attach_attempts"] == 0  # adopted from the live XML

    # ...and once more, so the reconcile has run twice against an attached channel.
    relay.stop()
    relay.start()
    entry = relay.wait_instance(spec.uuid, connected, "reconnect after second relay restart")
    assert iim_channels(dom) == [path]
    assert entry["libvirt"]["attach_attempts"] == 0
    log = relay.log()
    assert "already exists" not in log, log
    assert "Traceback" not in log, log
    assert log.startswith(first_log)


def test_domain_without_virtio_serial_controller_is_reported_once_with_the_fix(
        libvirt_domains, relays) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec(agent_channel=False)
    dom = daemon.start_domain(spec)
    domains.append(dom)
    relay = relays(serial_fallback="false").start()

    entry = relay.wait_instance(spec.uuid, lambda e: e.get("problem"), "problem reported")
    assert "hw_qemu_guest_agent=yes" in entry["fix"], entry
    assert iim_channels(dom) == []
    # Events that make the relay look at the domain again must not repeat the warning.
    assert entry["problem"] == "no_controller" and entry.get("channel") is None
    dom.suspend()
    relay.wait_instance(spec.uuid, lambda e: e["domain_state"] == "paused", "paused")
    dom.resume()
    entry = relay.wait_instance(spec.uuid, lambda e: e["domain_state"] == "running", "running")
    assert "hw_qemu_guest_agent=yes" in entry["fix"]
    log = relay.stop()
    assert log.count("no virtio-serial controller") == 1, log


@pytest.mark.slow
def test_serial_fallback_reads_the_guest_through_the_pty_of_serial_port_1(
        libvirt_domains, relays) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec(agent_channel=False, serial_ports=2)
    image = daemon.own_file(
        os.path.join(daemon.base, f"{spec.name}.img"),
        boot_image(agent_stream(count=15, interval=0.2, tail=(
            Failure(seq=16, check="web", reason="nginx exited 137"),))))
    spec = DomainSpec(name=spec.name, uuid=spec.uuid, agent_channel=False, serial_ports=2,
                      disk=image)
    relay = relays(serial_fallback="true", serial_port="1")
    # The relay first, so it is reading before the guest's first frames.
    relay.start()
    dom = daemon.start_domain(spec)
    domains.append(dom)
    root = ET.fromstring(dom.XMLDesc(0))
    pty = next(s.find("source").get("path") for s in root.findall("./devices/serial")
               if s.find("target").get("port") == "1")

    entry = relay.wait_instance(
        spec.uuid, lambda e: e.get("origin") == "serial" and connected(e)
        and (e["detector"].get("last_seq") or 0) >= 2, "frames over the serial port")
    assert entry["libvirt"]["path"] == pty, entry  # the host end of ttyS1, from the live XML
    assert entry["problem"] == "no_controller"  # still said, with the fix, while serial works
    assert iim_channels(dom) == []
    # The failure the "guest" wrote at the end is queued for Masakari.
    entry = relay.wait_instance(spec.uuid, lambda e: e.get("last_failure"), "failure queued")
    assert entry["last_failure"]["kind"] == "process_failure"
    assert "nginx exited 137" in json.dumps(entry["last_failure"])


def test_pause_and_resume_reach_the_detector(libvirt_domains, relays) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec()
    dom = daemon.start_domain(spec)
    domains.append(dom)
    relay = relays().start()
    relay.wait_instance(spec.uuid, hotplugged_and_connected, "attached")

    dom.suspend()
    relay.wait_instance(spec.uuid, lambda e: domain_state(e) == "paused", "paused")
    dom.resume()
    entry = relay.wait_instance(spec.uuid, lambda e: domain_state(e) == "running", "resumed")
    assert connected(entry)
    assert iim_channels(dom) == [libvirt_channel_path(daemon, dom, spec)]
