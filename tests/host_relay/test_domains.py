"""host_relay.domains: domain XML, channel XML, state mapping and opt-in, on plain strings."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from host_relay import domains
from host_relay.detector import DomainState
from host_relay.domains import OptIn, parse_domain
from host_relay.settings import LibvirtSettings

UUID = "3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a01"

# Trimmed from a live Nova instance: qemu-ga channel (hence the controller), a pty
# console on port 0 and a TCP port 1 as Nova writes them with [serial_console] enabled.
NOVA_XML = f"""
<domain type='kvm' id='7'>
  <name>instance-0000002a</name>
  <uuid>{UUID.upper()}</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="29.0.0"/>
      <nova:name>db-3</nova:name>
      <nova:owner>
        <nova:user uuid="u">admin</nova:user>
        <nova:project uuid="p">prod</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
  <devices>
    <controller type='virtio-serial' index='0'/>
    <serial type='pty'>
      <source path='/dev/pts/4'/>
      <log file='/var/lib/nova/instances/{UUID}/console.log' append='off'/>
      <target type='isa-serial' port='0'/>
    </serial>
    <serial type='tcp'>
      <source mode='bind' host='192.0.2.10' service='10001'/>
      <protocol type='raw'/>
      <target port='1'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>
"""


def test_nova_domain_is_parsed() -> None:
    info = parse_domain(NOVA_XML)
    assert info.uuid == UUID  # lower-cased, as socket names and Nova use it
    assert info.name == "instance-0000002a"
    assert info.has_virtio_serial
    assert info.channel_path is None and info.channel_other is None
    assert (info.nova_project, info.nova_name, info.nova_label) == ("prod", "db-3", "prod/db-3")
    assert info.serial(0).endpoint == "/dev/pts/4"
    assert info.serial(1).endpoint == "tcp:192.0.2.10:10001"
    assert info.serial(2) is None


def test_existing_iim_channel_and_an_unusable_one() -> None:
    with_channel = NOVA_XML.replace("</devices>", (
        "<channel type='unix'><source mode='bind' path='/run/iim/x.sock'/>"
        "<target type='virtio' name='org.openstack.iim.0' state='disconnected'/>"
        "<alias name='channel1'/></channel></devices>"))
    assert parse_domain(with_channel).channel_path == "/run/iim/x.sock"
    pty_channel = NOVA_XML.replace("</devices>", (
        "<channel type='pty'><target type='virtio' name='org.openstack.iim.0'/></channel>"
        "</devices>"))
    info = parse_domain(pty_channel)
    assert info.channel_path is None and "type=pty" in info.channel_other


def test_bare_domain_has_nothing() -> None:
    info = parse_domain(f"<domain><name>n</name><uuid>{UUID}</uuid></domain>")
    assert not info.has_virtio_serial and info.serials == ()
    assert info.nova_name is None and info.nova_label == "/"


def test_serial_ports_the_relay_cannot_read() -> None:
    xml = (f"<domain><name>n</name><uuid>{UUID}</uuid><devices>"
           "<serial type='pty'><target port='1'/></serial>"  # persistent XML: no path yet
           "<serial type='tcp'><source mode='connect' host='h' service='1'/>"
           "<target port='2'/></serial>"
           "<serial type='file'><source path='/tmp/f'/><target port='3'/></serial>"
           "</devices></domain>")
    info = parse_domain(xml)
    assert [info.serial(p).endpoint for p in (1, 2, 3)] == [None, None, None]


@pytest.mark.parametrize("xml", ["<domain", "<node/>"])
def test_bad_xml_is_a_clear_error(xml) -> None:
    with pytest.raises(domains.DomainXMLError):
        parse_domain(xml)


def test_channel_xml_is_what_libvirt_needs() -> None:
    xml = domains.channel_xml("/var/lib/iim/channels/a'b.sock")
    root = ET.fromstring(xml)
    assert root.tag == "channel" and root.get("type") == "unix"
    assert root.find("source").attrib == {"mode": "bind",
                                          "path": "/var/lib/iim/channels/a'b.sock"}
    assert root.find("target").attrib == {"type": "virtio", "name": "org.openstack.iim.0"}
    assert domains.socket_path("/d", UUID) == f"/d/{UUID}.sock"


def test_hot_plugged_channel_xml_leaves_the_path_to_libvirt() -> None:
    root = ET.fromstring(domains.channel_xml())
    assert root.get("type") == "unix"
    assert root.find("source").attrib == {"mode": "bind"}
    assert root.find("target").attrib == {"type": "virtio", "name": "org.openstack.iim.0"}
    chosen = "/var/lib/libvirt/qemu/channel/target/domain-3-instance-0000000a/org.openstack.iim.0"
    assert domains.is_libvirt_channel_path(chosen)
    assert not domains.is_libvirt_channel_path(f"/var/lib/iim/channels/{UUID}.sock")
    assert not domains.is_libvirt_channel_path(
        "/var/lib/libvirt/qemu/channel/target/domain-3-x/org.qemu.guest_agent.0")


def test_endpoints() -> None:
    assert domains.parse_endpoint("tcp:127.0.0.1:4555") == ("tcp", ("127.0.0.1", 4555))
    assert domains.parse_endpoint("tcp:[::1]:4555") == ("tcp", ("::1", 4555))
    assert domains.parse_endpoint("/dev/pts/3") == ("path", "/dev/pts/3")
    with pytest.raises(ValueError):
        domains.parse_endpoint("tcp:nohost")


@pytest.mark.parametrize(("state", "reason", "expected"), [
    (0, 0, DomainState.UNKNOWN),
    (1, 1, DomainState.RUNNING),
    (1, 10, DomainState.MIGRATING),  # post-copy: running, but pages still arrive
    (2, 0, DomainState.RUNNING),  # blocked on a resource: still running
    (3, 1, DomainState.PAUSED),
    (3, 2, DomainState.MIGRATING),  # paused for (incoming) migration
    (3, 8, DomainState.SHUTDOWN),
    (3, 10, DomainState.CRASHED),
    (4, 1, DomainState.SHUTDOWN),
    (5, 2, DomainState.SHUTOFF),
    (6, 0, DomainState.CRASHED),
    (7, 0, DomainState.PAUSED),
])
def test_state_mapping(state, reason, expected) -> None:
    assert domains.state_from_libvirt(state, reason) is expected


@pytest.mark.parametrize(("event", "detail", "expected"), [
    (0, 0, None), (1, 0, None),  # defined, undefined
    (2, 0, DomainState.RUNNING), (2, 1, DomainState.MIGRATING),
    (3, 0, DomainState.PAUSED), (3, 1, DomainState.MIGRATING),
    (4, 0, DomainState.RUNNING), (4, 1, DomainState.RUNNING), (4, 3, DomainState.MIGRATING),
    (5, 1, DomainState.SHUTOFF), (5, 3, DomainState.SHUTOFF), (5, 2, DomainState.CRASHED),
    (6, 2, DomainState.SHUTDOWN), (7, 0, DomainState.PAUSED), (8, 0, DomainState.CRASHED),
    (99, 0, None),
])
def test_event_mapping(event, detail, expected) -> None:
    assert domains.state_from_event(event, detail) is expected


def test_event_codes_match_libvirt() -> None:
    libvirt = pytest.importorskip("libvirt")
    assert (domains.EVENT_STARTED, domains.EVENT_STOPPED, domains.EVENT_CRASHED) == (
        libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STOPPED,
        libvirt.VIR_DOMAIN_EVENT_CRASHED)
    assert domains.state_from_libvirt(libvirt.VIR_DOMAIN_PAUSED,
                                      libvirt.VIR_DOMAIN_PAUSED_POSTCOPY) is DomainState.MIGRATING
    assert domains.state_from_event(libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                                    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED
                                    ) is DomainState.MIGRATING
    assert domains.is_active_state(libvirt.VIR_DOMAIN_PAUSED)
    assert not domains.is_active_state(libvirt.VIR_DOMAIN_SHUTOFF)


def test_opt_in_rules() -> None:
    info = parse_domain(NOVA_XML)
    assert OptIn().decide(info)[0]
    assert OptIn.from_settings(LibvirtSettings(opt_in="list", instance_uuids=(UUID.upper(),))
                               ).decide(info)[0]
    other = OptIn("list", instance_uuids=frozenset({"0" * 8 + "-0000-4000-8000-" + "0" * 12}))
    ok, why = other.decide(info)
    assert not ok and "instance_uuids" in why
    assert OptIn("match", match_name="^instance-").decide(info)[0]
    assert OptIn("match", match_metadata="^prod/").decide(info)[0]
    assert OptIn("match", match_metadata="/db-[0-9]+$").decide(info)[0]
    ok, why = OptIn("match", match_name="^web", match_metadata="^staging/").decide(info)
    assert not ok and "'prod/db-3'" in why and "instance-0000002a" in why
    # No Nova metadata: match_metadata cannot match, even a pattern that matches "/".
    bare = parse_domain(f"<domain><name>n</name><uuid>{UUID}</uuid></domain>")
    assert not OptIn("match", match_metadata=".*").decide(bare)[0]


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="match_name"):
        LibvirtSettings(match_name="(")
    with pytest.raises(ValueError, match="not a UUID"):
        LibvirtSettings(instance_uuids=("nope",))
    with pytest.raises(ValueError, match="opt_in"):
        LibvirtSettings(opt_in="some")
    assert not LibvirtSettings(connection_uri=" ").enabled


def test_attach_hints_name_the_fix() -> None:
    assert "hw_qemu_guest_agent=yes" in domains.attach_hint(
        "internal error: no virtio-serial controllers are available")
    assert "libvirt's channel directory" in domains.attach_hint(
        "Unable to unlink /x: Operation not permitted")
    assert "test driver" in domains.attach_hint(
        "this function is not supported by the connection driver: virDomainAttachDeviceFlags")
    assert "detach" in domains.attach_hint("Requested operation is not valid: chardev already "
                                           "exists")
