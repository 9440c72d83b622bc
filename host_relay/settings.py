"""The relay's settings as plain values.

Entry points read oslo.config once and build a :class:`RelaySettings`; every
constructor below takes values from it, so nothing deep in the relay reads the
global ``CONF``.  Bounds are enforced by the oslo options (``min=``/``max=``);
this dataclass only groups the values.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from typing import Optional

OPT_IN_CHOICES = ("all", "match", "list")  # [libvirt] opt_in
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# A DNS name: dot-separated labels of letters, digits and inner hyphens (RFC 1123).
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_LISTEN_EXAMPLE = "127.0.0.1:9105, [::1]:9105 or 0.0.0.0:9105"


def parse_listen(value: str) -> Optional[tuple[str, int]]:
    """``host:port`` -> (host, port); an empty value -> None (nothing listens).

    The host is required (an IPv4 address, a bracketed IPv6 address or a host
    name): a metrics endpoint is bound only where the operator says.  Raises
    ValueError saying what is wrong and what is expected.
    """
    text = value.strip()
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port: give an address and a port, "
                         f"e.g. {_LISTEN_EXAMPLE}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address: e.g. [::1]:9105") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:9105")
    elif host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host} is not an IPv4 address: e.g. {_LISTEN_EXAMPLE}") from None
    elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not an IP address or host name: e.g. {_LISTEN_EXAMPLE}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} must be a number between 1 and 65535: "
                         f"e.g. {_LISTEN_EXAMPLE}")
    return host, int(port_text)


@dataclasses.dataclass(frozen=True)
class ChannelSettings:
    socket_dir: str = "/var/lib/iim/channels"
    reconnect_initial: float = 0.5  # first retry after a refused/closed socket
    reconnect_max: float = 30.0  # backoff cap
    read_chunk: int = 4096  # bytes per read() call
    max_bytes_per_second: int = 65536  # per channel; excess is dropped unread and counted
    max_frames_per_second: int = 200  # per channel; excess frames are counted and ignored


@dataclasses.dataclass(frozen=True)
class DeliverySettings:
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    jitter: float = 0.2
    request_timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""  # host:port for the Prometheus endpoint; empty: off

    def __post_init__(self) -> None:
        parse_listen(self.listen)  # raises ValueError when malformed

    @property
    def address(self) -> Optional[tuple[str, int]]:
        return parse_listen(self.listen)


@dataclasses.dataclass(frozen=True)
class LibvirtSettings:
    """[libvirt]: an empty ``connection_uri`` turns the libvirt integration off.

    Off unless asked for here: code (and tests) that build settings by hand
    get no libvirt connection.  The operator-facing default, qemu:///system,
    is the oslo option's, which ``settings_from`` always passes in.
    """

    connection_uri: str = ""
    opt_in: str = "all"  # all | match | list
    match_name: str = ""  # regex searched in the domain name
    match_metadata: str = ""  # regex searched in "<nova project>/<nova name>"
    instance_uuids: tuple[str, ...] = ()
    serial_fallback: bool = True
    serial_port: int = 1  # the guest's /dev/ttyS1; Nova allows ports 0-3
    socket_owner: str = ""  # "" = libvirt-qemu or qemu, whichever exists
    socket_group: str = ""  # "" = the owner's primary group
    reconnect_initial: float = 1.0
    reconnect_max: float = 60.0

    def __post_init__(self) -> None:
        if self.opt_in not in OPT_IN_CHOICES:
            raise ValueError(f"opt_in must be one of {', '.join(OPT_IN_CHOICES)}")
        for name in ("match_name", "match_metadata"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise ValueError(f"{name} is not a regular expression: {exc}") from None
        object.__setattr__(self, "instance_uuids",
                           tuple(u.strip().lower() for u in self.instance_uuids))
        bad = [u for u in self.instance_uuids if not _UUID_RE.match(u)]
        if bad:
            raise ValueError(f"instance_uuids: not a UUID: {', '.join(bad)}")
        if not 0 <= self.serial_port <= 3:
            raise ValueError("serial_port must be within [0, 3]: Nova allows 4 serial ports")
        if not 0 < self.reconnect_initial <= self.reconnect_max:
            raise ValueError("reconnect_initial must be positive and at most reconnect_max")

    @property
    def enabled(self) -> bool:
        return bool(self.connection_uri.strip())


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    host: str
    state_path: str = "/var/lib/iim"
    shutdown_grace: float = 5.0
    channels: ChannelSettings = dataclasses.field(default_factory=ChannelSettings)
    delivery: DeliverySettings = dataclasses.field(default_factory=DeliverySettings)
    libvirt: LibvirtSettings = dataclasses.field(default_factory=LibvirtSettings)
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)
    # Unknown options and sections found at start-up (each with the likely fix):
    # logged then, and kept for `iim-relay status` so they are not forgotten.
    config_warnings: tuple[str, ...] = ()

    @property
    def outbox_path(self) -> str:
        return os.path.join(self.state_path, "outbox.sqlite")

    @property
    def control_socket(self) -> str:
        return os.path.join(self.state_path, "control.sock")
