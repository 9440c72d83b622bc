"""[metrics] options: where the relay serves its Prometheus metrics, if anywhere."""

from __future__ import annotations

from oslo_config import cfg, types

from host_relay.conf._group import register_group
from host_relay.settings import parse_listen

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
