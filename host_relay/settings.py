"""The relay's settings as plain values, built from the oslo options.

Entry points read oslo.config once and build a :class:`RelaySettings`
(``host_relay.conf.settings_from``); every constructor below takes values
from it, so nothing deep in the relay reads the global ``CONF``.

Each field declared with ``opt_field`` is the option of the same name in the
class's ``OPTION_GROUP``: its default and its bounds (``min``/``max``,
``choices``) are the option's, written once in ``host_relay/conf/`` and
checked here too, so settings built by hand (tests, tools) obey the same
limits as a configuration file.  ``ORDERED`` names the pairs of fields where
the first must not exceed the second; the loader reports those with file and
line from the same list.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import ClassVar, Optional

from host_relay.conf import bounds
from host_relay.conf.channels import channels_opts
from host_relay.conf.default import default_opts
from host_relay.conf.libvirt import libvirt_opts
from host_relay.conf.masakari import masakari_opts
from host_relay.conf.metrics import metrics_opts, parse_listen
from host_relay.conf.witnesses import witnesses_opts

__all__ = [
    "BUILT_FROM_OPTIONS",
    "ChannelSettings",
    "DeliverySettings",
    "LibvirtSettings",
    "MetricsSettings",
    "RelaySettings",
    "UUID_RE",
    "WitnessSettings",
    "parse_listen",
]

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

Pairs = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class ChannelSettings:
    """[channels]: how each guest channel is read (see the options for meanings)."""

    OPTION_GROUP: ClassVar[str] = "channels"
    ORDERED: ClassVar[Pairs] = (("reconnect_initial", "reconnect_max"),)

    socket_dir: str = bounds.opt_field(channels_opts, "socket_dir")
    reconnect_initial: float = bounds.opt_field(channels_opts, "reconnect_initial")
    reconnect_max: float = bounds.opt_field(channels_opts, "reconnect_max")
    read_chunk: int = bounds.opt_field(channels_opts, "read_chunk")
    max_bytes_per_second: int = bounds.opt_field(channels_opts, "max_bytes_per_second")
    max_frames_per_second: int = bounds.opt_field(channels_opts, "max_frames_per_second")
    decode_budget: float = bounds.opt_field(channels_opts, "decode_budget")

    def __post_init__(self) -> None:
        bounds.check(self)


@dataclasses.dataclass(frozen=True)
class DeliverySettings:
    """[masakari]: iim's own delivery options (keystoneauth's are read by the client)."""

    OPTION_GROUP: ClassVar[str] = "masakari"
    ORDERED: ClassVar[Pairs] = (("backoff_initial", "backoff_max"),)

    backoff_initial: float = bounds.opt_field(masakari_opts, "backoff_initial")
    backoff_max: float = bounds.opt_field(masakari_opts, "backoff_max")
    jitter: float = bounds.opt_field(masakari_opts, "jitter")
    request_timeout: float = bounds.opt_field(masakari_opts, "request_timeout")

    def __post_init__(self) -> None:
        bounds.check(self)


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: ``listen`` is host:port for the Prometheus endpoint; empty: off."""

    OPTION_GROUP: ClassVar[str] = "metrics"

    listen: str = bounds.opt_field(metrics_opts, "listen")

    def __post_init__(self) -> None:
        bounds.check(self)
        parse_listen(self.listen)  # the option's own check; raises ValueError when malformed

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

    OPTION_GROUP: ClassVar[str] = "libvirt"
    ORDERED: ClassVar[Pairs] = (("reconnect_initial", "reconnect_max"),)

    connection_uri: str = bounds.opt_field(libvirt_opts, "connection_uri", default="")
    opt_in: str = bounds.opt_field(libvirt_opts, "opt_in")  # all | match | list
    match_name: str = bounds.opt_field(libvirt_opts, "match_name")
    match_metadata: str = bounds.opt_field(libvirt_opts, "match_metadata")
    instance_uuids: tuple[str, ...] = bounds.opt_field(libvirt_opts, "instance_uuids")
    serial_fallback: bool = bounds.opt_field(libvirt_opts, "serial_fallback")
    serial_port: int = bounds.opt_field(libvirt_opts, "serial_port")
    socket_owner: str = bounds.opt_field(libvirt_opts, "socket_owner")
    socket_group: str = bounds.opt_field(libvirt_opts, "socket_group")
    reconnect_initial: float = bounds.opt_field(libvirt_opts, "reconnect_initial")
    reconnect_max: float = bounds.opt_field(libvirt_opts, "reconnect_max")

    def __post_init__(self) -> None:
        object.__setattr__(self, "connection_uri", self.connection_uri.strip())
        object.__setattr__(self, "instance_uuids",
                           tuple(u.strip().lower() for u in self.instance_uuids))
        bounds.check(self)
        for name in ("match_name", "match_metadata"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise ValueError(f"{name} is not a regular expression: {exc}") from None
        bad = [u for u in self.instance_uuids if not UUID_RE.match(u)]
        if bad:
            raise ValueError(f"instance_uuids: not a UUID: {', '.join(bad)}")

    @property
    def enabled(self) -> bool:
        return bool(self.connection_uri)


@dataclasses.dataclass(frozen=True)
class WitnessSettings:
    """[witnesses]: the host's witnesses for silent instances, the silence guard, evidence."""

    OPTION_GROUP: ClassVar[str] = "witnesses"
    ORDERED: ClassVar[Pairs] = (("progress_interval", "vcpu_stall"),)

    enabled: bool = bounds.opt_field(witnesses_opts, "enabled")
    confirmed_hang_after: float = bounds.opt_field(witnesses_opts, "confirmed_hang_after")
    agent_ping_timeout: int = bounds.opt_field(witnesses_opts, "agent_ping_timeout")
    agent_lost_timeout: float = bounds.opt_field(witnesses_opts, "agent_lost_timeout")
    notify_on_agent_lost: bool = bounds.opt_field(witnesses_opts, "notify_on_agent_lost")
    progress_interval: float = bounds.opt_field(witnesses_opts, "progress_interval")
    vcpu_stall: float = bounds.opt_field(witnesses_opts, "vcpu_stall")
    guard_min_instances: int = bounds.opt_field(witnesses_opts, "guard_min_instances")
    guard_min_percent: float = bounds.opt_field(witnesses_opts, "guard_min_percent")
    guard_window: float = bounds.opt_field(witnesses_opts, "guard_window")
    evidence_max_per_instance: int = bounds.opt_field(witnesses_opts,
                                                      "evidence_max_per_instance")
    evidence_max_total_mb: int = bounds.opt_field(witnesses_opts, "evidence_max_total_mb")
    evidence_console_lines: int = bounds.opt_field(witnesses_opts, "evidence_console_lines")
    inject_nmi_on_hang: bool = bounds.opt_field(witnesses_opts, "inject_nmi_on_hang")

    def __post_init__(self) -> None:
        bounds.check(self)


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    """[DEFAULT] and every group's settings; ``host`` has no default (the option's is this host)."""

    OPTION_GROUP: ClassVar[str] = "DEFAULT"

    host: str
    state_path: str = bounds.opt_field(default_opts, "state_path")
    shutdown_grace: float = bounds.opt_field(default_opts, "shutdown_grace")
    channels: ChannelSettings = dataclasses.field(default_factory=ChannelSettings)
    delivery: DeliverySettings = dataclasses.field(default_factory=DeliverySettings)
    libvirt: LibvirtSettings = dataclasses.field(default_factory=LibvirtSettings)
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)
    witnesses: WitnessSettings = dataclasses.field(default_factory=WitnessSettings)
    # Unknown options and sections found at start-up (each with the likely fix):
    # logged then, and kept for `iim-relay status` so they are not forgotten.
    config_warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bounds.check(self)

    @property
    def evidence_path(self) -> str:
        return os.path.join(self.state_path, "evidence")

    @property
    def outbox_path(self) -> str:
        return os.path.join(self.state_path, "outbox.sqlite")

    @property
    def control_socket(self) -> str:
        return os.path.join(self.state_path, "control.sock")


# Every settings class built from options, in the order the loader reports problems.
BUILT_FROM_OPTIONS = (RelaySettings, ChannelSettings, DeliverySettings, MetricsSettings,
                      LibvirtSettings, WitnessSettings)
