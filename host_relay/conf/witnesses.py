"""[witnesses] options: what the host asks when an instance goes silent, and what it keeps.

The one source of ``host_relay.settings.WitnessSettings``: one field per
option, with the option's default and bounds.
"""

from __future__ import annotations

from oslo_config import cfg

from host_relay.conf._group import register_group

WEEK = 7 * 24 * 3600.0

witnesses_group = cfg.OptGroup(
    "witnesses",
    title="Host witnesses for silent instances",
    help="""
When an instance's agent goes silent, the relay asks the host's own
witnesses whether the guest hung or only its agent died: libvirt events
(a pvpanic guest panic, a watchdog action, an I/O error), the guest's
qemu-guest-agent (a guest-ping through libvirt, only for domains with the
org.qemu.guest_agent.0 channel) and the guest's progress (vCPU time,
disk and network I/O from libvirt's bulk domain stats). A hang a witness
confirms is reported after ``confirmed_hang_after``; a guest whose
qemu-guest-agent still answers is "agent lost", not a failure; without a
witness the [detector] rule applies unchanged. Before a hang is
reported the relay saves a console screenshot and the end of the console
log under ``state_path/evidence/``.
""",
)

witnesses_opts = [
    cfg.BoolOpt(
        "enabled",
        default=True,
        help="""
Ask the host's witnesses about silent instances. When false, a silent
instance is reported after the [detector] rule alone
(``missed_heartbeats`` intervals), and an instance whose agent died is
reported as hung even when its guest still runs.
""",
    ),
    cfg.FloatOpt(
        "confirmed_hang_after",
        default=2.5,
        min=1.0,
        max=60.0,
        help="""
Seconds of silence after which the relay asks the witnesses, and reports
the hang at once if one confirms it (a panic event, a guest-ping that
times out while qemu-guest-agent's port is open, vCPUs that used no
time). At least two heartbeat intervals always pass first, whatever this
says. Lower values report confirmed hangs sooner; a guest that stalls
for longer than this plus ``agent_ping_timeout`` (4.5 s with the
defaults, against 10 s for the [detector] rule) is reported as hung.
The default, 2.5 s, is two and a half of the agent's default 1 s
heartbeats, so one late heartbeat never starts a confirmation; with the
2 s ping (measured on a Debian guest under QEMU TCG: a guest-ping
answers in 6-12 ms, an unanswered one returns after 2.0 s) a kernel
panic is confirmed at most 4.5 s after the last heartbeat.
""",
    ),
    cfg.IntOpt(
        "agent_ping_timeout",
        default=2,
        min=1,
        max=30,
        help="""
Seconds a qemu-guest-agent guest-ping may take before the guest counts
as hung (libvirt's agent command timeout, whole seconds). The ping runs
off the relay's event loop. Too low a value calls a guest hung that is
only slow (a CPU-starved guest under load); too high a value delays the
confirmation of a real hang by that much.
""",
    ),
    cfg.FloatOpt(
        "agent_lost_timeout",
        default=600.0,
        min=10.0,
        max=WEEK,
        help="""
Seconds an instance may stay "agent lost" (iim's agent silent while the
guest's qemu-guest-agent answers) before the relay notifies Masakari, if
``notify_on_agent_lost`` asks for it. Until then it is a WARNING, a status
state and a metric only.
""",
    ),
    cfg.BoolOpt(
        "notify_on_agent_lost",
        default=False,
        help="""
Send a hang notification for an instance that has been "agent lost" for
``agent_lost_timeout`` seconds. Off by default: a guest that runs and
answers its qemu-guest-agent is not a VM failure, and restarting it for
a dead monitoring agent would restart a healthy VM.
""",
    ),
    cfg.FloatOpt(
        "progress_interval",
        default=5.0,
        min=1.0,
        max=300.0,
        help="""
Seconds between two reads of libvirt's bulk domain stats (one call for
all domains) that tell whether guests make progress. Lower values notice
stalled vCPUs sooner at a small cost in libvirtd CPU; higher values
are cheaper.
""",
    ),
    cfg.FloatOpt(
        "vcpu_stall",
        default=10.0,
        min=2.0,
        max=600.0,
        help="""
Seconds a running domain's vCPUs may use no time at all before that by
itself confirms a hang. An idle Linux guest still takes timer interrupts,
so its vCPU time grows (Debian guests under QEMU TCG stood still for at
most 3.1 s idle, 1.6 s through agent restarts and pauses); a stuck QEMU
or a guest halted with interrupts off does not. Lower values confirm such
a hang sooner, but a host that starves QEMU of CPU stops vCPU time too,
and this witness may release hangs the host-wide silence guard holds;
with 1 s heartbeats the [detector] rule reports a silent guest after
10 s anyway. Must be at least ``progress_interval``.
""",
    ),
    cfg.IntOpt(
        "guard_min_instances",
        default=3,
        min=2,
        max=100000,
        help="""
The host-wide silence guard engages when at least this many armed
instances (and at least ``guard_min_percent`` % of them) go silent within
``guard_window`` seconds: the host or the relay is the likely cause, not
that many guests. While engaged, hang notifications are held (an ERROR
in the log, status and a metric) until each instance's own witness
confirms its hang or the condition clears. Process and probe failures are
never held.
""",
    ),
    cfg.FloatOpt(
        "guard_min_percent",
        default=25.0,
        min=1.0,
        max=100.0,
        help="""
The share of armed instances, in percent, that must go silent together
for the silence guard to engage (with at least ``guard_min_instances``).
Lower values hold notifications sooner on small hosts; higher values let
more simultaneous silences through as separate hangs.
""",
    ),
    cfg.FloatOpt(
        "guard_window",
        default=10.0,
        min=1.0,
        max=600.0,
        help="""
Seconds within which silences count as one host-wide burst for the
silence guard. About the [detector] hang time is right: silences that
began further apart are separate events.
""",
    ),
    cfg.IntOpt(
        "evidence_max_per_instance",
        default=5,
        min=0,
        max=100,
        help="""
How many evidence directories (console screenshot, console log tail)
to keep per instance under ``state_path/evidence/<uuid>/``; the oldest
go first. 0 turns evidence off.
""",
    ),
    cfg.IntOpt(
        "evidence_max_total_mb",
        default=256,
        min=1,
        max=100000,
        help="""
Most megabytes all evidence may take under ``state_path/evidence/``;
the oldest evidence of any instance is removed first.
""",
    ),
    cfg.IntOpt(
        "evidence_console_lines",
        default=200,
        min=0,
        max=10000,
        help="""
How many of the last lines of the guest console log (where the domain
XML names one) to keep with the evidence. 0 keeps none.
""",
    ),
    cfg.BoolOpt(
        "inject_nmi_on_hang",
        default=False,
        help="""
After saving the evidence of a confirmed hang, inject an NMI into the
guest, so a guest set up with kdump writes a crash dump before Masakari
recovers it. Off by default: a guest without kdump may just log it.
""",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    register_group(conf, witnesses_group)
    conf.register_opts(witnesses_opts, group=witnesses_group)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {witnesses_group: witnesses_opts}
