"""[channels] options: how the relay reads each instance's guest channel."""

from __future__ import annotations

from oslo_config import cfg

from host_relay.conf._group import register_group

channels_group = cfg.OptGroup(
    "channels",
    title="Guest channel options",
    help="""
How the relay finds and reads each instance's channel: the UNIX socket
QEMU listens on for the instance's ``org.openstack.iim.0`` virtio-serial
port. Channels the relay hot-plugs through libvirt get their socket from
libvirt (in its channel target directory); ``socket_dir`` is for static
channels and set-ups without libvirt.
""",
)

channels_opts = [
    cfg.StrOpt(
        "socket_dir",
        default="/var/lib/iim/channels",
        help="""
Directory for static channels: one ``<instance-uuid>.sock`` per
instance whose domain XML already names a socket here (a patched Nova,
or no libvirt at all: ``[libvirt] connection_uri`` empty), the UNIX
socket QEMU creates for the instance's iim channel. QEMU (the libvirt
QEMU user) must be able to create sockets here and the relay must be
able to connect to them. Hot-plugged channels do not use it: libvirt
places their sockets in its own channel directory.
""",
    ),
    cfg.FloatOpt(
        "reconnect_initial",
        default=0.5,
        min=0.05,
        max=60.0,
        help="""
Seconds before the first reconnect attempt after a channel socket
refuses a connection or closes; each further failure doubles the delay
up to ``reconnect_max``. Smaller values notice a restarted guest sooner
at the cost of more connect attempts against a socket that is not there
yet.
""",
    ),
    cfg.FloatOpt(
        "reconnect_max",
        default=30.0,
        min=0.05,  # its real floor is reconnect_initial, which the loader checks
        max=600.0,
        help="""
Upper bound, in seconds, on the reconnect delay for one channel. Lower
values pick up a guest that comes back after a long absence sooner;
higher values cost less on a host with many stopped instances. Must be
at least ``reconnect_initial``.
""",
    ),
    cfg.IntOpt(
        "read_chunk",
        default=65536,
        min=512,
        max=262144,
        help="""
Bytes requested from a channel socket per read. An honest agent's frames
arrive a few at a time whatever this is; a guest that floods its channel
is read in chunks this large, so what it costs is its decoding, not one
system call and one loop wake-up per few bytes. Nothing is buffered in
the relay while a channel waits for its budget: the kernel holds it.
""",
    ),
    cfg.IntOpt(
        "max_bytes_per_second",
        default=65536,
        min=1024,
        max=16 * 1024 * 1024,
        help="""
Per-channel byte budget per second. Over budget, the relay stops
reading that channel until the budget refills (counted as throttling in
status): the socket buffer fills and QEMU holds back that guest only, so
a misbehaving or hostile guest cannot make the relay spend its CPU on one
channel. Nothing already read is dropped. An honest agent sends a few
hundred bytes per heartbeat; too low a value delays heartbeats and causes
false alarms.
""",
    ),
    cfg.FloatOpt(
        "decode_budget",
        default=0.25,
        min=0.01,
        max=1.0,
        help="""
Share of one CPU core that reading and decoding the input of all
channels together may take (CPU time measured around each read, its
decoding and the detector; the event loop's own cost per read is added
from its thread's CPU time), shared fairly between channels: channels
that need less than an even share keep what they need, the rest is split
evenly between those that want more. Each channel may always use 3 ms of
CPU a second (many heartbeats' worth), so honest instances are never held
back however many there are. A channel over its share is not read until
it is back within it: the socket buffer fills and QEMU holds that guest
back; nothing is dropped.
""",
    ),
    cfg.IntOpt(
        "max_frames_per_second",
        default=200,
        min=10,
        max=10000,
        help="""
Per-channel frame budget per second. Over budget, the relay stops
reading that channel until the budget refills (counted as throttling in
status); frames already read are still handled, never dropped. An honest
agent sends one heartbeat per interval (at most 10 per second) plus the
occasional event; too low a value delays heartbeats and causes false
alarms, too high a value lets one guest keep the relay busy.
""",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    register_group(conf, channels_group)
    conf.register_opts(channels_opts, group=channels_group)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {channels_group: channels_opts}
