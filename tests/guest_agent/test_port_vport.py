"""The port without udev: /dev/virtio-ports/<name> is missing, /dev/vportNpM is found through sysfs.

A fake sysfs tree in tmp_path names the ports; a real pty (PtyHost, through a
symlink named like the kernel's node) stands in for /dev/vportNpM.
"""

from __future__ import annotations

import logging
import time

from guest_agent.port import Port, find_vport
from guest_agent.reactor import Reactor
from iim_protocol.messages import Heartbeat
from tests.guest_agent.conftest import PtyHost
from tests.guest_agent.test_monitor import FakeClock

IIM = "org.openstack.iim.0"


def name_port(sysfs, node: str, name: str) -> None:
    (sysfs / node).mkdir(parents=True)
    (sysfs / node / "name").write_text(name + "\n")  # the kernel ends it with a newline


def test_find_vport_reads_the_names_in_sysfs(tmp_path) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    name_port(sysfs, "vport0p1", "org.qemu.guest_agent.0")
    name_port(sysfs, "vport0p2", IIM)
    (sysfs / "vport0p3").mkdir()  # no name file (an unnamed console port): skipped
    link = f"{dev}/virtio-ports/{IIM}"

    assert find_vport(link, str(sysfs), str(dev)) == f"{dev}/vport0p2"
    assert find_vport(f"{dev}/virtio-ports/org.qemu.guest_agent.0", str(sysfs), str(dev)) \
        == f"{dev}/vport0p1"
    assert find_vport(f"{dev}/virtio-ports/other.0", str(sysfs), str(dev)) is None
    # Only udev's virtio-ports directory is looked up: a tty or any other path is used as is.
    assert find_vport(f"{dev}/ttyS1", str(sysfs), str(dev)) is None
    assert find_vport(f"/srv/virtio-ports/{IIM}", str(sysfs), str(dev)) is None
    assert find_vport(link, str(tmp_path / "no-sysfs"), str(dev)) is None


def test_hot_plugged_port_without_udev_is_opened_through_sysfs(tmp_path, caplog) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    sysfs.mkdir()
    dev.mkdir()
    clock = FakeClock()
    connects: list[int] = []
    port = Port(f"{dev}/virtio-ports/{IIM}", Reactor(), clock, lambda: connects.append(1),
                sysfs_root=str(sysfs), dev_root=str(dev))
    host = PtyHost(dev / "vport1p1")
    caplog.set_level(logging.INFO, logger="guest_agent.port")
    try:
        port.on_timer(clock.now)  # nothing plugged yet: waits, as for a missing link
        assert port.state == "closed" and "No such file" in port.last_error
        assert port.next_deadline() is not None

        # The host hot-plugs the channel: the kernel names vport1p1, devtmpfs makes the node.
        name_port(sysfs, "vport1p0", "org.qemu.guest_agent.0")
        name_port(sysfs, "vport1p1", IIM)
        host.open()
        clock.now = port.next_deadline()
        port.on_timer(clock.now)
        assert port.connected and connects == [1]
        assert port.device == f"{dev}/vport1p1" and port.info()["device"] == port.device
        assert port.send(Heartbeat(seq=7, checks=(("web", "ok"),)))
        assert host.wait_for("heartbeat", timeout=5.0, seq=7).checks == (("web", "ok"),)

        # Unplugged and plugged again under the same node: reopened, logged once.
        host.close()
        port._reopen("test unplug")
        host.open()
        for _ in range(10):
            if port.connected:
                break
            clock.now = port.next_deadline()
            port.on_timer(clock.now)
        assert port.connected and port.opens == 2
        found = [r for r in caplog.records if "no udev link" in r.getMessage()]
        assert len(found) == 1, [r.getMessage() for r in caplog.records]
        assert f"{dev}/vport1p1" in found[0].getMessage()
    finally:
        port.close()
        host.close()


def test_an_existing_link_wins_over_sysfs(tmp_path) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    name_port(sysfs, "vport0p1", IIM)  # names a node that does not exist
    (dev / "virtio-ports").mkdir(parents=True)
    host = PtyHost(dev / "virtio-ports" / IIM)  # udev's link
    host.open()
    port = Port(str(host.link), Reactor(), time.monotonic, lambda: None,
                sysfs_root=str(sysfs), dev_root=str(dev))
    try:
        port.on_timer(time.monotonic())
        assert port.connected and port.device == str(host.link)
    finally:
        port.close()
        host.close()
