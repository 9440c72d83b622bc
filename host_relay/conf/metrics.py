"""[metrics] options: where the relay serves its Prometheus metrics, if anywhere."""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

from oslo_config import cfg, types

from host_relay.conf._group import register_group

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


metrics_group = cfg.OptGroup(
    "metrics",
    title="Prometheus metrics options",
    help="""
The relay's Prometheus endpoint (``/metrics``): per-instance detector and
channel state, rejected guest input, delivery to Masakari and the outbox.
Off unless ``listen`` is set.
""",
)


class ListenAddress(types.String):
    """A ``host:port`` string (empty allowed), checked when the option is read."""

    def __init__(self) -> None:
        super().__init__(type_name="host:port value")

    def __call__(self, value: str) -> str:
        value = super().__call__(value)
        parse_listen(value)  # ValueError names what is wrong; the loader adds file and line
        return value.strip()


metrics_opts = [
    cfg.Opt(
        "listen",
        type=ListenAddress(),
        default="",
        help="""
Address and port (``host:port``) on which the relay serves Prometheus
metrics at ``/metrics``, for example ``127.0.0.1:9105`` (scraped by a
local agent) or ``<management IP>:9105``. Write an IPv6 address in
brackets (``[::1]:9105``); ``0.0.0.0:9105`` listens on every interface,
which is only wise behind a firewall: the metrics name every instance on
the host. Empty (the default): nothing listens. A port already in use is
logged and retried; failure detection and delivery go on regardless.
""",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    register_group(conf, metrics_group)
    conf.register_opts(metrics_opts, group=metrics_group)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {metrics_group: metrics_opts}
