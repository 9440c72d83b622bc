"""[DEFAULT] options of iim-relay: who this host is and where its state lives."""

from __future__ import annotations

import socket

from oslo_config import cfg

default_opts = [
    cfg.StrOpt(
        "host",
        default=socket.gethostname(),
        sample_default="<current hostname>",
        help="""
Name of this compute host as Masakari knows it.

Every notification carries it as ``hostname``, and Masakari only acts on
a notification whose host is registered in a failover segment: this must
match the compute host's name there (the name Nova's compute service
reports, which is what masakari-monitors sends too). A mismatch makes
masakari-api refuse every notification with ``400 Host with name X could
not be found``; the relay keeps such notifications as dead letters and
logs them loudly.
""",
    ),
    cfg.StrOpt(
        "state_path",
        default="/var/lib/iim",
        help="""
Directory for the relay's own state: the durable outbox of notifications
not yet accepted by Masakari (``outbox.sqlite``) and the control socket
(``control.sock``) through which local tools query the running relay. It
must be on local, persistent storage writable by the relay: the outbox
is what keeps a notification alive across a masakari-api outage or a
relay restart.
""",
    ),
    cfg.FloatOpt(
        "shutdown_grace",
        default=5.0,
        min=0.5,
        max=60.0,
        help="""
Seconds the relay gives itself on SIGTERM to finish an in-flight
delivery and close channels cleanly before it exits. Nothing is lost by
a short value: undelivered notifications stay in the outbox and are sent
after the restart. A value longer than systemd's ``TimeoutStopSec`` gets
the relay killed instead.
""",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(default_opts)


def list_opts() -> dict[str, list[cfg.Opt]]:
    return {"DEFAULT": default_opts}
