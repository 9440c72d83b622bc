"""[libvirt] options: how the relay finds instances through libvirt and gives them a channel.

The values end up in ``host_relay.settings.LibvirtSettings`` (see
``host_relay.conf.build.settings_from``); ``host_relay.libvirt_watch`` uses
them.  An empty ``connection_uri`` turns all of it off: the relay then only
watches ``[channels] socket_dir``.
"""

from __future__ import annotations

from oslo_config import cfg

from host_relay.conf._group import register_group

GROUP = "libvirt"

libvirt_group = cfg.OptGroup(
    GROUP,
    title="libvirt options",
    help="""
How the relay works with stock Nova: it follows the domains of the local
libvirtd, hot-plugs the ``org.openstack.iim.0`` channel into every running
instance that is opted in (live only, again after every start, libvirtd
restart and incoming live migration), and passes each domain's state
(paused, migrating, shut off...) to the failure detector. See
docs/nova.md.
""",
)

libvirt_opts = [
    cfg.StrOpt(
        "connection_uri",
        default="qemu:///system",
        help="""
libvirt connection URI of this compute host's hypervisor, as Nova's
``[libvirt] connection_uri`` (``qemu:///system`` for KVM). Empty turns
the libvirt integration off: no hot-plug, no domain states, and the
relay only reads the sockets that appear in ``[channels] socket_dir``
(for example from a patched Nova that adds the channel itself).
""",
    ),
    cfg.StrOpt(
        "opt_in",
        default="all",
        choices=[
            ("all", "every running domain gets the channel"),
            ("match", "only domains whose name matches match_name, or whose Nova "
                      "metadata matches match_metadata"),
            ("list", "only the domains (Nova instances) listed in instance_uuids"),
        ],
        help="""
Which running domains get the iim channel hot-plugged. A guest without
the agent never says hello, so the detector never watches it and the
channel costs one idle socket: ``all`` is safe. Domains that are not
opted in are listed by ``iim-relay status`` with the reason.
""",
    ),
    cfg.StrOpt(
        "match_name",
        default="",
        help="""
With ``opt_in = match``: a Python regular expression searched in the
libvirt domain name (Nova names domains after its
``instance_name_template``, e.g. ``instance-0000002a``). Empty matches
nothing. Example: ``^instance-``.
""",
    ),
    cfg.StrOpt(
        "match_metadata",
        default="",
        help="""
With ``opt_in = match``: a Python regular expression searched in
``PROJECT/NAME``, built from the ``<nova:instance>`` metadata Nova
writes into every domain (the owning project's name and the server's
display name). Empty matches nothing. Examples: ``^prod/`` (every
server of project prod), ``/db-[0-9]+$`` (servers named db-N in any
project).
""",
    ),
    cfg.ListOpt(
        "instance_uuids",
        default=[],
        help="""
With ``opt_in = list``: the Nova instance UUIDs (libvirt domain UUIDs)
that get the channel, comma-separated. Example:
``3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a01,3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a02``.
""",
    ),
    cfg.BoolOpt(
        "serial_fallback",
        default=True,
        help="""
Read the agent through a serial port when a domain cannot get the
virtio channel (its image lacks ``hw_qemu_guest_agent=yes``, so it has
no virtio-serial controller, or the hot-plug failed). The relay reads the
host end of serial port ``serial_port`` from the domain XML: a pty, or a
TCP port when Nova's ``[serial_console] enabled = true``. The agent in
the guest then uses ``/dev/ttyS<serial_port>``. See docs/nova.md for what
Nova's serial console settings mean for this.
""",
    ),
    cfg.IntOpt(
        "serial_port",
        default=1,
        min=0,
        max=3,
        help="""
Index of the serial port (``<target port='N'/>``, the guest's
``/dev/ttySN``) used by the serial fallback. Port 0 is the guest's
console, whose output Nova logs to console.log: use 1 (needs
``hw_serial_port_count=2`` and Nova's serial console enabled). Nova allows
at most 4 serial ports, hence the maximum 3.
""",
    ),
    cfg.StrOpt(
        "socket_owner",
        default="",
        help="""
Owner of ``[channels] socket_dir``, the user QEMU runs as (it creates
static channels' sockets there; hot-plugged channels need no owner, libvirt
places them in its own directory). Empty: ``libvirt-qemu`` (Debian, Ubuntu) or
``qemu`` (RHEL and derivatives), whichever exists; if neither exists the
owner is left alone. The relay makes the directory mode 0770 so only that
user, its group and root get in.
""",
    ),
    cfg.StrOpt(
        "socket_group",
        default="",
        help="""
Group of ``[channels] socket_dir``. Empty: the primary group of
``socket_owner`` (``kvm`` on Debian for ``libvirt-qemu``).
""",
    ),
    cfg.FloatOpt(
        "reconnect_initial",
        default=1.0,
        min=0.1,
        max=60.0,
        help="""
Seconds before the first attempt to reconnect to libvirtd after the
connection failed or libvirtd restarted; each further failure doubles
the delay up to ``reconnect_max``, each delay randomised by up to 20 %
(never above ``reconnect_max``); a connection that lasted a minute
starts again from this value. Channels already connected keep
working meanwhile (they are QEMU's sockets, not libvirtd's).
""",
    ),
    cfg.FloatOpt(
        "reconnect_max",
        default=60.0,
        min=0.1,  # its real floor is reconnect_initial, which the loader checks
        max=600.0,
        help="""
Upper bound, in seconds, on the delay between reconnect attempts to
libvirtd. While disconnected the relay does not see domain state
changes, so a domain paused meanwhile may look hung: keep it short.
Must be at least ``reconnect_initial``.
""",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    register_group(conf, libvirt_group)
    conf.register_opts(libvirt_opts, group=libvirt_group)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {libvirt_group: libvirt_opts}
