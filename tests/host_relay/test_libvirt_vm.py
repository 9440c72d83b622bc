"""A real guest on "stock Nova": no iim channel in its XML, a killed process reaches Masakari.

The guest is the Debian 12 image of devtools/vm_image.py (built once, cached)
with the iim-agent .deb that packaging/build makes now installed into it, booted
under the private libvirtd of the ``libvirtd`` fixture (QEMU TCG) the way Nova
defines an instance whose image sets ``hw_qemu_guest_agent=yes``: an
org.qemu.guest_agent.0 channel (so there is a virtio-serial controller) and no
org.openstack.iim.0 channel.  Its init (vm_guest_init.sh, no systemd, no udev)
starts a demo process and the agent, waits until the agent reports the host
connected, then kills the demo process with SIGKILL.  ``iim-relay run``
hot-plugs the channel, the agent finds the port through sysfs (no udev link),
and the relay delivers the failure to a real masakari-api.

Figures (boot to hello, kill to queued and to Masakari's 202) are printed;
run with ``-s`` to see them.  Timing is bounded generously, not asserted tight.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from devtools.vm_image import VmImageUnavailable, ensure_base, make_disk
from tests.host_relay.libvirt_fixture import IIM_CHANNEL, LibvirtDaemon
from tests.host_relay.test_libvirt_relay import RelayProcess
from tests.host_relay.vm_guest import nova_domain_xml

pytestmark = [pytest.mark.slow, pytest.mark.libvirt]

REPO = Path(__file__).resolve().parents[2]
INIT_SCRIPT = Path(__file__).with_name("vm_guest_init.sh")
GUEST_INIT = "/sbin/iim-test-init"
# Measured here: ~8 s to init, ~25 s to the agent's hello under TCG; CI may be slower.
BOOT_TIMEOUT = 240.0
DELIVERY_TIMEOUT = 30.0  # kill -> Masakari's 202, generously
HOTPLUG_TIMEOUT = 60.0
POLL = 0.02  # also the console's resolution for the kill -> Masakari figure
MARKER = re.compile(r"IIM-TEST (\S+) (\d+\.\d+)")


@pytest.fixture(scope="session")
def vm_base():
    """The cached base image; building it from a clean cache takes ~35 s (Debian mirror)."""
    try:
        base = ensure_base()
    except VmImageUnavailable as exc:
        problem = str(exc)
    else:
        problem = None
    if problem is not None:  # a clear failure, never a silent skip
        pytest.fail(f"cannot build the real-VM test image: {problem}", pytrace=False)
    if base.build_seconds is not None:
        print(f"\n[vm] built the base image in {base.build_seconds:.1f}s: {base.rootfs}")
    return base


@pytest.fixture(scope="session")
def agent_deb(tmp_path_factory) -> str:
    """The iim-agent .deb built from this tree now, as packaging/build makes it."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([str(REPO / "packaging" / "build"), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"packaging/build failed:\n{proc.stderr}"
    (deb,) = [line for line in proc.stdout.split() if line.endswith(".deb")
              and os.path.basename(line).startswith("iim-agent_")]
    return deb


class Console:
    """The guest's ttyS0 (a file QEMU writes): marker lines with the host time first seen."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: dict[str, tuple[float, float]] = {}  # event -> (guest epoch, host time seen)
        self._offset = 0
        self._partial = ""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        now = time.time()
        self._offset += len(data)
        lines = (self._partial + data.decode(errors="replace")).split("\n")
        self._partial = lines.pop()
        for line in lines:
            m = MARKER.search(line)
            if m and m.group(1) not in self.seen:
                self.seen[m.group(1)] = (float(m.group(2)), now)

    def text(self) -> str:
        try:
            with open(self.path, errors="replace") as f:
                return f.read()[-6000:]
        except OSError as exc:
            return f"(no console: {exc})"


def wait_until(what: str, predicate, timeout: float, console: Console, relay: RelayProcess):
    """Poll ``predicate`` (and the console) until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        console.poll()
        if "not-ready" in console.seen:
            raise AssertionError(f"the guest gave up waiting for the agent; console:\n"
                                 f"{console.text()}\nrelay log:\n{relay.log()[-4000:]}")
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s; console:\n{console.text()}"
                                 f"\nrelay log:\n{relay.log()[-4000:]}")
        time.sleep(POLL)


def prepare_guest(daemon: LibvirtDaemon, base, deb: str) -> str:
    """A directory nobody (QEMU) can use: kernel, initrd, a fresh disk with ``deb`` installed."""
    vmdir = daemon.socket_dir("vm")
    for src, dst in ((base.kernel, "vmlinuz"), (base.initrd, "initrd.img")):
        shutil.copy(src, os.path.join(vmdir, dst))
    started = time.monotonic()
    disk = make_disk(base, deb, {GUEST_INIT: (INIT_SCRIPT.read_bytes(), 0o755)},
                     os.path.join(vmdir, "disk.img"))
    print(f"\n[vm] disk with the current agent made in {time.monotonic() - started:.1f}s")
    os.chown(disk, daemon.uid, daemon.gid)
    return vmdir


# The session fixtures build the image (~35 s) and the package first; the guest boots under TCG.
@pytest.mark.timeout(900)
def test_killed_process_in_a_real_guest_reaches_masakari_through_the_hot_plugged_channel(
        libvirtd, vm_base, agent_deb, masakari, masakari_host, tmp_path) -> None:
    daemon = libvirtd
    uuid = str(uuidlib.uuid4())
    vmdir = prepare_guest(daemon, vm_base, agent_deb)
    agent_socket = os.path.join(daemon.socket_dir("ga"), "qga.sock")
    console = Console(os.path.join(vmdir, "console.log"))
    relay = RelayProcess(daemon, tmp_path, host=masakari_host, endpoint=masakari.url)
    dom = None
    try:
        dom = daemon.conn.defineXML(nova_domain_xml(f"vm-{uuid[:8]}", uuid, vmdir, agent_socket,
                                                    f"init={GUEST_INIT}"))
        persistent = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert IIM_CHANNEL not in {t.get("name") for t in persistent.iter("target")}
        relay.start()
        dom.create()
        started = time.time()

        def entry() -> dict:
            return relay.instance(uuid) or {}

        wait_until("the relay hot-plugs the channel and connects",
                   lambda: entry().get("origin") == "hotplug"
                   and (entry().get("channel") or {}).get("state") == "connected",
                   HOTPLUG_TIMEOUT, console, relay)
        hotplugged = time.time()
        # The hello arms the detector; the heartbeat right behind it says the checks.
        # Through virtio-serial the two may come in two reads, and a status taken
        # between them shows the instance armed with no checks yet.
        armed = wait_until("the agent's hello arms the detector and a heartbeat follows",
                           lambda: (e := entry()).get("detector", {}).get("state") == "armed"
                           and e["detector"].get("checks") and e, BOOT_TIMEOUT, console, relay)
        armed_at = time.time()
        assert "kill" not in console.seen, "the guest killed its process before the relay armed"
        reported = armed["detector"]  # guest-reported fields: informational only
        assert reported["agent_version"] and list(reported["checks"]) == ["demo"], reported

        failure = wait_until(
            "the failure delivered to Masakari (202)",
            lambda: (f := entry().get("last_failure")) and f.get("state") == "delivered" and f,
            BOOT_TIMEOUT, console, relay)
        # The relay may be faster than the guest's console: its last marker may still be coming.
        wait_until("the guest's kill markers", lambda: "killed" in console.seen, HOTPLUG_TIMEOUT,
                   console, relay)
        assert {"init", "ready", "kill"} <= set(console.seen), console.text()
        assert failure["last_status"] == 202, failure
        assert failure["kind"] == "process_failure" and "iim-demo-app" in failure["reason"], failure
        assert failure["hostname"] == masakari_host

        time.sleep(1.0)  # a duplicate would have landed by now
        found = masakari.notifications_for(uuid)
        assert len(found) == 1, found
        (n,) = found
        assert n["type"] == "VM"
        assert n["payload"] == {"event": "LIFECYCLE", "instance_uuid": uuid,
                                "vir_domain_event": "STOPPED_FAILED"}
        assert n["source_host_uuid"] == masakari.hosts[masakari_host]
        assert n["notification_uuid"] == failure["notification_uuid"]
        # The agent opened the vport node sysfs names (no udev in this guest).
        ready_line = next(line for line in console.text().splitlines() if "IIM-TEST ready" in line)
        assert "/dev/vport" in ready_line, ready_line

        # Clocks: the guest's starts from the RTC (whole seconds) at boot, so it is off by up
        # to a second.  Its offset, measured at the "ready" marker through the same console,
        # puts the kill on the host's clock (give or take the console's latency, ~POLL).
        init_guest, init_seen = console.seen["init"]
        ready_guest, ready_seen = console.seen["ready"]
        kill_guest, kill_seen = console.seen["kill"]
        offset = ready_seen - ready_guest
        kill_host = kill_guest + offset
        print(f"[vm] boot to init {init_seen - started:.1f}s, hot-plug "
              f"{hotplugged - started:.1f}s, hello (armed) {armed_at - started:.1f}s after start; "
              f"guest clock {-offset:+.2f}s off the host's")
        print(f"[vm] kill -> queued {failure['created_at'] - kill_host:+.3f}s, "
              f"-> Masakari 202 {failure['finished_at'] - kill_host:+.3f}s (host clock, kill "
              f"placed by the guest clock's offset, +-{POLL}s); kill line seen -> 202 "
              f"{failure['finished_at'] - kill_seen:+.3f}s")
        assert failure["finished_at"] - kill_seen < DELIVERY_TIMEOUT
        # The detector goes to cooldown after notifying: no second notification.
        assert entry()["detector"]["state"] == "cooldown"
    finally:
        relay.stop()
        if dom is not None:
            daemon.remove(dom)
        shutil.rmtree(vmdir, ignore_errors=True)
