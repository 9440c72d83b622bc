"""The libvirt harness itself, with raw libvirt-python: what the relay's hot-plug relies on.

These pin the behaviour of the real QEMU driver (libvirt 9.0, QEMU 7.2 here)
that the relay is written against: a live attach of the iim channel makes QEMU
listen on the socket, a second attach is refused, and a domain without a
virtio-serial controller cannot take the channel at all.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import time
import tty
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest

from host_relay.domains import channel_xml as relay_channel_xml
from host_relay.domains import is_libvirt_channel_path
from iim_protocol.codec import Decoder
from iim_protocol.messages import Heartbeat, Hello
from tests.host_relay.libvirt_fixture import (
    AGENT_CHANNEL,
    IIM_CHANNEL,
    DomainSpec,
    channel_xml,
)
from tests.host_relay.serial_guest import agent_stream, boot_image

pytestmark = pytest.mark.libvirt

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0  # SeaBIOS boots the sector in about 1 s under TCG


def new_spec(**kw) -> DomainSpec:
    u = str(uuidlib.uuid4())
    return DomainSpec(name=f"t-{u[:8]}", uuid=u, **kw)


def live_channels(dom) -> dict[str, str]:
    """target name -> source path of every unix channel in the live XML."""
    root = ET.fromstring(dom.XMLDesc(0))
    found = {}
    for ch in root.findall("./devices/channel"):
        target, source = ch.find("target"), ch.find("source")
        found[target.get("name")] = source.get("path") if source is not None else None
    return found


def connect(path: str) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_daemon_runs_qemu_as_nobody_with_a_controller_from_the_agent_channel(
        libvirt_domains) -> None:
    daemon, domains = libvirt_domains
    # The connection is to this test's own libvirtd, run as nobody, with the QEMU driver
    # of the libvirt the relay is written against (how fast it started is not a property:
    # the fixture already fails after its start timeout).
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert os.stat(f"/proc/{daemon.proc.pid}").st_uid == daemon.uid
    assert daemon.conn.getType() == "QEMU"
    assert daemon.conn.getURI().startswith("qemu:///session")
    assert daemon.conn.getLibVersion() >= 9_000_000
    spec = new_spec(serial_ports=2)
    started = time.monotonic()
    dom = daemon.start_domain(spec)
    domains.append(dom)
    took = time.monotonic() - started
    assert took < 10, f"a domain took {took:.1f}s to start"
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert dom.UUIDString() == spec.uuid

    root = ET.fromstring(dom.XMLDesc(0))
    assert root.get("type") == "qemu"
    assert [c.get("type") for c in root.findall("./devices/controller[@type='virtio-serial']")]
    assert AGENT_CHANNEL in live_channels(dom)
    ptys = [s.find("source").get("path") for s in root.findall("./devices/serial")]
    assert len(ptys) == 2 and all(p.startswith("/dev/pts/") for p in ptys)
    (pid,) = [p for p in daemon.qemu_pids()
              if spec.name.encode() in open(f"/proc/{p}/cmdline", "rb").read()]
    assert os.stat(f"/proc/{pid}").st_uid == daemon.uid  # QEMU runs as nobody


def test_hot_plugged_channel_listens_and_a_second_attach_is_refused(libvirt_domains) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec()
    dom = daemon.start_domain(spec)
    domains.append(dom)
    sock_dir = daemon.socket_dir()
    path = os.path.join(sock_dir, f"{spec.uuid}.sock")
    xml = channel_xml(path)

    assert dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE) == 0
    assert live_channels(dom)[IIM_CHANNEL] == path
    # Live only: the persistent definition (which Nova rewrites anyway) is untouched.
    persistent = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert IIM_CHANNEL not in {t.get("name") for t in persistent.iter("target")}
    client = connect(path)
    try:
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):  # connected, and QEMU has nothing to say yet
            client.recv(1)
    finally:
        client.close()

    with pytest.raises(libvirt.libvirtError) as err:
        dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert "chardev already exists" in str(err.value)
    assert list(live_channels(dom)).count(IIM_CHANNEL) == 1

    # Destroying the domain removes the socket (libvirt cleans up after QEMU).
    dom.destroy()
    assert not os.path.exists(path)


def test_channel_without_a_path_gets_libvirts_own_socket(libvirt_domains) -> None:
    """What the relay hot-plugs: no path; libvirt creates the socket in its channel directory."""
    daemon, domains = libvirt_domains
    spec = new_spec()
    dom = daemon.start_domain(spec)
    domains.append(dom)

    assert dom.attachDeviceFlags(relay_channel_xml(), libvirt.VIR_DOMAIN_AFFECT_LIVE) == 0
    path = live_channels(dom)[IIM_CHANNEL]
    # The session daemon's channel target directory (the system daemon's is
    # /var/lib/libvirt/qemu/channel/target), one directory per running domain.
    target = os.path.join(daemon.home, ".config", "libvirt", "qemu", "channel", "target")
    assert os.path.dirname(os.path.dirname(path)) == target, path
    assert os.path.basename(os.path.dirname(path)) == f"domain-{dom.ID()}-{spec.name}"
    assert os.path.basename(path) == IIM_CHANNEL
    assert is_libvirt_channel_path(path)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and st.st_uid == daemon.uid  # libvirt's, as QEMU's user
    connect(path).close()

    dom.destroy()
    assert not os.path.exists(path)


def test_domain_without_virtio_serial_controller_cannot_take_the_channel(
        libvirt_domains) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec(agent_channel=False, serial_ports=2)
    dom = daemon.start_domain(spec)
    domains.append(dom)
    root = ET.fromstring(dom.XMLDesc(0))
    assert not root.findall("./devices/controller[@type='virtio-serial']")
    path = os.path.join(daemon.socket_dir(), f"{spec.uuid}.sock")

    with pytest.raises(libvirt.libvirtError) as err:
        dom.attachDeviceFlags(channel_xml(path), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert "no virtio-serial controllers are available" in str(err.value)
    assert not os.path.exists(path)


def test_boot_sector_guest_writes_agent_frames_to_the_pty_of_serial_port_1(
        libvirt_domains) -> None:
    """The serial fallback's test guest: frames written by the VM arrive on the host pty."""
    daemon, domains = libvirt_domains
    spec = new_spec(agent_channel=False, serial_ports=2)
    image = daemon.own_file(os.path.join(daemon.base, f"{spec.name}.img"),
                            boot_image(agent_stream(count=40, interval=0.2)))
    spec = DomainSpec(name=spec.name, uuid=spec.uuid, agent_channel=False, serial_ports=2,
                      disk=image)
    dom = daemon.start_domain(spec)
    domains.append(dom)
    root = ET.fromstring(dom.XMLDesc(0))
    ptys = {s.find("target").get("port"): s.find("source").get("path")
            for s in root.findall("./devices/serial")}

    fd = os.open(ptys["1"], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        decoder, got = Decoder(), []
        deadline = time.monotonic() + READ_TIMEOUT
        while sum(isinstance(m, Heartbeat) for m in got) < 3:
            assert time.monotonic() < deadline, f"only {got} within {READ_TIMEOUT}s"
            if select.select([fd], [], [], 0.2)[0]:
                got += decoder.feed(os.read(fd, 4096))
    finally:
        os.close(fd)
    assert any(isinstance(m, Hello) and m.agent_version == "boot-sector" for m in got)
    seqs = [m.seq for m in got if isinstance(m, Heartbeat)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert decoder.stats.frames_rejected == 0
