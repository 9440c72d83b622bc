"""What the relay reads from a libvirt domain, and what it asks of one: pure, no I/O.

:mod:`host_relay.libvirt_watch` talks to libvirtd; everything it decides is
here so it can be tested on strings and numbers: parsing the domain XML (is
there a virtio-serial controller? an iim channel already? the host end of a
serial port? Nova's ``<nova:instance>`` metadata), the channel XML it
hot-plugs, the mapping of libvirt states and lifecycle events to the
detector's :class:`DomainState`, and the opt-in rule.

libvirt's numeric codes are copied here (they are part of libvirt's stable
ABI) so this module does not need libvirt-python.
"""

from __future__ import annotations

import dataclasses
import os
import re
import xml.etree.ElementTree as ET
from typing import Optional
from xml.sax.saxutils import quoteattr

from host_relay.detector import DomainState
from host_relay.settings import LibvirtSettings

CHANNEL_NAME = "org.openstack.iim.0"
SOCKET_SUFFIX = ".sock"
TCP_PREFIX = "tcp:"  # a serial port's host end reached over TCP: "tcp:HOST:PORT"
_NOVA_NS_PREFIX = "http://openstack.org/xmlns/libvirt/nova/"

# How a domain's channel got there (status, and the Relay's choice of transport).
ORIGIN_HOTPLUG = "hotplug"  # the relay attached it to the live domain
ORIGIN_STATIC = "static"  # the domain's persistent XML already has it
ORIGIN_SERIAL = "serial"  # serial fallback: a pty or TCP serial port
ORIGIN_SOCKET_DIR = "socket_dir"  # only seen as <uuid>.sock in [channels] socket_dir
ORIGINS = (ORIGIN_HOTPLUG, ORIGIN_STATIC, ORIGIN_SERIAL, ORIGIN_SOCKET_DIR)

# Why a domain has no channel (status "problem").
NO_CONTROLLER = "no_controller"
NOT_OPTED_IN = "not_opted_in"
ATTACH_FAILED = "attach_failed"
NO_SERIAL_PORT = "no_serial_port"

FIX_NO_CONTROLLER = (
    "set hw_qemu_guest_agent=yes on the image (openstack image set --property "
    "hw_qemu_guest_agent=yes IMAGE): Nova then gives the instance a virtio-serial controller "
    "when it is built or rebuilt from that image"
)

# virDomainState and the reasons that change its meaning for the detector.
_NOSTATE, _RUNNING, _BLOCKED, _PAUSED, _SHUTDOWN, _SHUTOFF, _CRASHED, _PMSUSPENDED = range(8)
_RUNNING_POSTCOPY = 10
_PAUSED_MIGRATION, _PAUSED_SHUTTING_DOWN, _PAUSED_CRASHED = 2, 8, 10
_PAUSED_POSTCOPY, _PAUSED_POSTCOPY_FAILED = 12, 13

# virDomainEventType and details.
EVENT_DEFINED, EVENT_UNDEFINED, EVENT_STARTED, EVENT_SUSPENDED, EVENT_RESUMED = range(5)
EVENT_STOPPED, EVENT_SHUTDOWN, EVENT_PMSUSPENDED, EVENT_CRASHED = range(5, 9)
_STARTED_MIGRATED = 1
_SUSPENDED_MIGRATED, _SUSPENDED_POSTCOPY, _SUSPENDED_POSTCOPY_FAILED = 1, 7, 8
_RESUMED_MIGRATED, _RESUMED_POSTCOPY = 1, 3
_STOPPED_CRASHED = 2


class DomainXMLError(ValueError):
    """The domain XML cannot be parsed."""


@dataclasses.dataclass(frozen=True)
class SerialPort:
    """One ``<serial>`` device: the guest's /dev/ttyS<port> and its host end."""

    port: int
    kind: str  # libvirt's type: pty, tcp, file, unix...
    path: Optional[str] = None  # pty: /dev/pts/N (live XML only)
    host: Optional[str] = None  # tcp
    service: Optional[str] = None  # tcp port
    mode: Optional[str] = None  # tcp/unix: bind (QEMU listens) or connect

    @property
    def endpoint(self) -> Optional[str]:
        """What the relay opens: a pty path or ``tcp:HOST:PORT``; None if it cannot read it."""
        if self.kind == "pty" and self.path:
            return self.path
        if self.kind == "tcp" and self.mode in (None, "bind") and self.host and self.service:
            return f"{TCP_PREFIX}{self.host}:{self.service}"
        return None


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    has_virtio_serial: bool
    channel_path: Optional[str]  # an org.openstack.iim.0 unix channel (mode bind)
    channel_other: Optional[str]  # an org.openstack.iim.0 channel the relay cannot use
    serials: tuple[SerialPort, ...] = ()
    nova_name: Optional[str] = None
    nova_project: Optional[str] = None

    def serial(self, port: int) -> Optional[SerialPort]:
        return next((s for s in self.serials if s.port == port), None)

    @property
    def nova_label(self) -> str:
        """``PROJECT/NAME`` from Nova's metadata, what ``match_metadata`` is searched in."""
        return f"{self.nova_project or ''}/{self.nova_name or ''}"


def parse_domain(xml: str) -> DomainInfo:
    """The parts of a domain's XML (live or persistent) the relay uses."""
    try:
        # From libvirtd (root), not from a guest; expat resolves no external entities.
        root = ET.fromstring(xml)  # noqa: S314
    except ET.ParseError as exc:
        raise DomainXMLError(f"domain XML does not parse: {exc}") from None
    if root.tag != "domain":
        raise DomainXMLError(f"not a domain XML: root element <{root.tag}>")
    uuid = (root.findtext("uuid") or "").strip().lower()
    name = (root.findtext("name") or "").strip()
    devices = root.find("devices")
    if devices is None:
        devices = ET.Element("devices")
    has_vs = any(c.get("type") == "virtio-serial" for c in devices.findall("controller"))
    channel_path = channel_other = None
    for ch in devices.findall("channel"):
        target = ch.find("target")
        if target is None or target.get("name") != CHANNEL_NAME:
            continue
        source = ch.find("source")
        path = source.get("path") if source is not None else None
        if ch.get("type") == "unix" and path and source.get("mode", "bind") == "bind":
            channel_path = path
        else:
            channel_other = f"type={ch.get('type')} path={path}"
    serials = []
    for dev in devices.findall("serial"):
        target, source = dev.find("target"), dev.find("source")
        try:
            port = int(target.get("port", "0")) if target is not None else 0
        except ValueError:
            continue
        src = source.attrib if source is not None else {}
        serials.append(SerialPort(port=port, kind=dev.get("type", ""), path=src.get("path"),
                                  host=src.get("host"), service=src.get("service"),
                                  mode=src.get("mode")))
    nova_name, nova_project = _nova_metadata(root)
    return DomainInfo(uuid=uuid, name=name, has_virtio_serial=has_vs,
                      channel_path=channel_path, channel_other=channel_other,
                      serials=tuple(serials), nova_name=nova_name, nova_project=nova_project)


def _nova_metadata(root: ET.Element) -> tuple[Optional[str], Optional[str]]:
    metadata = root.find("metadata")
    if metadata is None:
        return None, None
    for inst in metadata:
        ns, _, local = inst.tag[1:].partition("}") if inst.tag.startswith("{") else ("", "", "")
        if local != "instance" or not ns.startswith(_NOVA_NS_PREFIX):
            continue
        q = f"{{{ns}}}"
        name = inst.findtext(f"{q}name")
        project = inst.findtext(f"{q}owner/{q}project")
        return (name.strip() if name else None), (project.strip() if project else None)
    return None, None


def socket_path(socket_dir: str, uuid: str) -> str:
    return os.path.join(socket_dir, f"{uuid}{SOCKET_SUFFIX}")


def channel_xml(path: Optional[str] = None) -> str:
    """The device the relay hot-plugs: QEMU listens on a socket, the guest sees the named port.

    Without ``path`` (what the relay hot-plugs) libvirt picks the socket itself,
    in its channel target directory beside Nova's qemu-ga socket
    (``.../qemu/channel/target/domain-N-NAME/org.openstack.iim.0``), created and
    labelled by libvirt's own security drivers; the live XML then names it.
    """
    source = "<source mode='bind'/>" if path is None else (
        f"<source mode='bind' path={quoteattr(path)}/>")
    return (f"<channel type='unix'>{source}"
            f"<target type='virtio' name='{CHANNEL_NAME}'/></channel>")


def is_libvirt_channel_path(path: str) -> bool:
    """A socket libvirt placed itself: ``.../domain-N-NAME/org.openstack.iim.0``."""
    parent, name = os.path.split(path)
    return name == CHANNEL_NAME and os.path.basename(parent).startswith("domain-")


def parse_endpoint(path: str) -> tuple[str, object]:
    """``("tcp", (host, port))`` for ``tcp:HOST:PORT``, else ``("path", path)``."""
    if path.startswith(TCP_PREFIX):
        host, _, port = path[len(TCP_PREFIX):].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{path!r} is not tcp:HOST:PORT")
        return "tcp", (host.strip("[]"), int(port))
    return "path", path


# --- states --------------------------------------------------------------------------------------


def state_from_libvirt(state: int, reason: int) -> DomainState:
    """``virDomainGetState`` (state, reason) -> the detector's view."""
    if state in (_RUNNING, _BLOCKED):
        return DomainState.MIGRATING if reason == _RUNNING_POSTCOPY else DomainState.RUNNING
    if state == _PAUSED:
        if reason in (_PAUSED_MIGRATION, _PAUSED_POSTCOPY, _PAUSED_POSTCOPY_FAILED):
            return DomainState.MIGRATING
        if reason == _PAUSED_SHUTTING_DOWN:
            return DomainState.SHUTDOWN
        if reason == _PAUSED_CRASHED:
            return DomainState.CRASHED
        return DomainState.PAUSED
    if state == _PMSUSPENDED:
        return DomainState.PAUSED
    if state == _SHUTDOWN:
        return DomainState.SHUTDOWN
    if state == _SHUTOFF:
        return DomainState.SHUTOFF
    if state == _CRASHED:
        return DomainState.CRASHED
    return DomainState.UNKNOWN


def state_from_event(event: int, detail: int) -> Optional[DomainState]:
    """A lifecycle event -> the state it announces, or None (DEFINED, UNDEFINED, unknown)."""
    if event == EVENT_STARTED:
        # An incoming migration starts the domain paused until the source lets go.
        return DomainState.MIGRATING if detail == _STARTED_MIGRATED else DomainState.RUNNING
    if event == EVENT_SUSPENDED:
        if detail in (_SUSPENDED_MIGRATED, _SUSPENDED_POSTCOPY, _SUSPENDED_POSTCOPY_FAILED):
            return DomainState.MIGRATING
        return DomainState.PAUSED
    if event == EVENT_RESUMED:
        return DomainState.MIGRATING if detail == _RESUMED_POSTCOPY else DomainState.RUNNING
    if event == EVENT_STOPPED:
        return DomainState.CRASHED if detail == _STOPPED_CRASHED else DomainState.SHUTOFF
    if event == EVENT_SHUTDOWN:
        return DomainState.SHUTDOWN
    if event == EVENT_PMSUSPENDED:
        return DomainState.PAUSED
    if event == EVENT_CRASHED:
        return DomainState.CRASHED
    return None


def is_active_state(state: int) -> bool:
    """A domain in this virDomainState has a QEMU process (a channel can exist)."""
    return state in (_RUNNING, _BLOCKED, _PAUSED, _SHUTDOWN, _PMSUSPENDED)


# --- opt-in --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptIn:
    """Which domains get the channel ([libvirt] opt_in and its patterns)."""

    mode: str = "all"
    match_name: str = ""
    match_metadata: str = ""
    instance_uuids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("match_name", "match_metadata"):
            re.compile(getattr(self, name))  # raises re.error

    @classmethod
    def from_settings(cls, s: LibvirtSettings) -> OptIn:
        return cls(s.opt_in, s.match_name, s.match_metadata, frozenset(s.instance_uuids))

    def decide(self, info: DomainInfo) -> tuple[bool, str]:
        """(opted in?, why), the reason worded for status."""
        if self.mode == "all":
            return True, "opt_in = all"
        if self.mode == "list":
            if info.uuid in self.instance_uuids:
                return True, "listed in instance_uuids"
            return False, "not listed in [libvirt] instance_uuids"
        if self.match_name and re.search(self.match_name, info.name):
            return True, f"name {info.name} matches match_name"
        label = info.nova_label
        if self.match_metadata and info.nova_name is not None and re.search(
                self.match_metadata, label):
            return True, f"Nova metadata {label} matches match_metadata"
        return False, (f"name {info.name!r} and Nova metadata {label!r} match neither "
                       "[libvirt] match_name nor match_metadata")


def attach_hint(message: str) -> str:
    """What an operator can do about a failed hot-plug, from libvirt's error text."""
    text = message.lower()
    if "no virtio-serial controllers" in text:
        return FIX_NO_CONTROLLER
    if "unable to unlink" in text or "permission denied" in text:
        return ("the QEMU user cannot create the socket in libvirt's channel directory "
                "(/var/lib/libvirt/qemu/channel/target): check that libvirtd owns it and "
                "that the security driver (SELinux, AppArmor) labels are libvirt's own")
    if "not supported" in text:
        return "this libvirt driver cannot hot-plug devices (the test driver cannot); use QEMU/KVM"
    if "already exists" in text:
        return ("another chardev or port with this name is in the domain; "
                "detach it (virsh detach-device --live) and restart iim-relay")
    return "see the libvirtd log for the domain"
