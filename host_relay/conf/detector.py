"""[detector] options: when a silent or failing guest becomes a notification.

These options are the one source of ``host_relay.detector_config.DetectorConfig``:
one field per option, with the option's default and bounds.  The heartbeat bounds are
the wire protocol's own limits, so an interval the relay accepts is one an
agent may legally announce.
"""

from __future__ import annotations

from oslo_config import cfg

from host_relay.conf._group import register_group
from iim_protocol.messages import MAX_HEARTBEAT_INTERVAL, MAX_PAUSE_SECONDS, MIN_HEARTBEAT_INTERVAL

WEEK = 7 * 24 * 3600.0

detector_group = cfg.OptGroup(
    "detector",
    title="Failure detector options",
    help="""
When the relay decides that an instance has failed and tells Masakari. A
guest is reported when a watched process fails or when it stops
heartbeating while libvirt says its domain is running. Every value here
trades detection time against false alarms; the defaults detect a hung
guest in about ``missed_heartbeats`` x the agent's heartbeat interval.
""",
)

detector_opts = [
    cfg.IntOpt(
        "missed_heartbeats",
        default=10,
        min=2,
        max=100,
        help="""
How many heartbeat intervals in a row may pass without a heartbeat
before a running guest is declared hung. Detection time is about this
many times the agent's heartbeat interval. Lower values detect a hang
sooner but turn short stalls (a backup, a filesystem freeze, an
overloaded host) into false alarms and needless recoveries; higher
values ride those out and leave a truly hung guest down for longer. At
least 2, so one late heartbeat never triggers a recovery. The default,
10 (10 s at the agent's default 1 s interval), rides out a crashed agent
that systemd restarts (about 2-4 s of silence) and still reports a hung
guest four times sooner than qemu-guest-agent pings would (40-50 s).
""",
    ),
    cfg.FloatOpt(
        "min_interval",
        default=0.5,
        min=MIN_HEARTBEAT_INTERVAL,
        max=MAX_HEARTBEAT_INTERVAL,
        help="""
Smallest heartbeat interval, in seconds, the relay accepts from an
agent; a faster interval announced by the guest is raised to this. Lower
values allow faster detection but cost CPU on both sides and make brief
guest stalls look like hangs. Must not exceed ``max_interval``.
""",
    ),
    cfg.FloatOpt(
        "max_interval",
        default=10.0,
        min=MIN_HEARTBEAT_INTERVAL,
        max=MAX_HEARTBEAT_INTERVAL,
        help="""
Largest heartbeat interval, in seconds, the relay accepts from an agent;
a slower interval announced by the guest is lowered to this. It caps the
worst-case detection time at ``missed_heartbeats`` x ``max_interval``
seconds, whatever the guest asks for. Higher values let guest owners
choose slow, cheap heartbeats; lower values guarantee faster detection.
""",
    ),
    cfg.FloatOpt(
        "min_uptime",
        default=10.0,
        min=0.0,
        max=3600.0,
        help="""
Seconds after a guest agent's hello (sent when the agent starts, so
after every boot) during which missing heartbeats are not reported: the
agent may not have settled yet. Failures the agent reports itself are
not delayed, and a reconnect to the same boot does not start the grace
period again. Too short a value reports guests that are slow to settle;
too long a value leaves a guest that hangs right after boot unprotected
for that long. 0 turns the grace period off.
""",
    ),
    cfg.FloatOpt(
        "max_pause",
        default=3600.0,
        min=0.0,
        max=MAX_PAUSE_SECONDS,  # a week: the longest pause the protocol carries
        help="""
Longest maintenance pause, in seconds, a guest may request: while
paused, the relay sends no notification for the instance. A longer
request is shortened to this, and monitoring resumes when it expires.
The operator's pause from the host (``iim-relay pause``) has the same
bound; a longer one is refused.
Higher values let guest owners cover long maintenance windows; they also
let a forgotten pause leave an instance unprotected for that long. With
0 a pause request ends at once (it is logged as clamped).
""",
    ),
    cfg.FloatOpt(
        "cooldown",
        default=300.0,
        min=0.0,
        max=86400.0,
        help="""
Seconds after a notification during which the relay sends no further
notification for the same instance, giving Masakari time to recover it.
Shorter values report a second failure right after a recovery sooner,
but risk notifying again while the first recovery is still running
(masakari-api refuses duplicates within its own 180 s window anyway);
longer values suppress repeated recoveries of a guest that keeps
failing. 0 turns it off.
""",
    ),
    cfg.IntOpt(
        "max_notifications",
        default=3,
        min=1,
        max=100,
        help="""
At most this many notifications per instance within any sliding
``notification_window``; a failure beyond that is logged and counted but
not sent, and the instance stays failed until its agent says hello again
(after a restart). This stops a restart storm when a guest fails again
after every recovery (VMware HA's default is 3 resets per hour). Lower
values give up on a flapping guest sooner; higher values keep recovering
it.
""",
    ),
    cfg.FloatOpt(
        "notification_window",
        default=3600.0,
        min=60.0,
        max=WEEK,
        help="""
Length, in seconds, of the sliding window ``max_notifications`` counts
over. A longer window is stricter about guests that fail repeatedly; a
shorter one forgives them sooner.
""",
    ),
    cfg.FloatOpt(
        "late_tolerance",
        default=2.0,
        min=0.0,
        max=3600.0,
        advanced=True,
        help="""
Seconds by which the relay may notice a hang deadline late before it
concludes that it stalled itself (an overloaded host, a long garbage
collection, a suspended relay) rather than the guest: its heartbeats may
still sit unread in the socket. It then checks again one interval later
instead of notifying, so a busy host does not restart all its instances.
Lower values distrust the relay's own timing sooner; higher values
report a hang seen late rather than re-checking.
""",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    register_group(conf, detector_group)
    conf.register_opts(detector_opts, group=detector_group)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {detector_group: detector_opts}
