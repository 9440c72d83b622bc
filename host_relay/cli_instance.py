"""``iim-relay pause``, ``resume`` and ``status INSTANCE``: parse, ask the relay, print.

The relay answers them in host_relay.maintenance.  An answer with ``refused``
becomes its exit status (maintenance.EXIT_STATUS): 1 for an instance the
relay does not know, 2 for a duration or reason it refuses (longer than
[detector] max_pause, for one).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Sequence
from typing import Any, Optional

import click

from host_relay.maintenance import EXIT_STATUS, human

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
UNITS_HELP = "s, m, h or d (30s, 10m, 2h, 1d, 1h30m; a plain number is seconds)"

_CONFIG_HELP = ("Configuration file of the relay (to find its control socket); may be given "
                "more than once.  Default: /etc/iim/relay.conf and /etc/iim/iim-relay.conf.")
_SOCKET_HELP = "Control socket of the relay (default: <state_path>/control.sock)."


def parse_duration(text: str) -> float:
    """Seconds from ``30s``, ``10m``, ``2h``, ``1d``, ``1h30m`` or plain seconds."""
    value = text.strip().lower().replace(" ", "")
    if not value:
        raise ValueError(f"not a duration: {text!r}; units: {UNITS_HELP}")
    pos, total = 0, 0.0
    for m in _PART.finditer(value):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2) or "s"]
        pos = m.end()
    if pos != len(value) or total != total or total == float("inf"):
        raise ValueError(f"not a duration: {text!r}; units: {UNITS_HELP}")
    return total


def _when(wall: Optional[float]) -> str:
    if wall is None:
        return "-"
    t = datetime.datetime.fromtimestamp(float(wall), datetime.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter("must be more than 0")
    return seconds


def _ask(config_files: Sequence[str], control_socket: Optional[str],
         payload: dict[str, Any]) -> dict[str, Any]:
    """The relay's answer; exits 1 when no relay answers, and as EXIT_STATUS on refusal."""
    from host_relay.cli import _load
    from host_relay.control import ControlError, request

    if control_socket is None:
        _, settings = _load(config_files)
        control_socket = settings.control_socket
    try:
        answer = request(control_socket, payload)
    except ControlError as exc:
        click.echo(f"iim-relay: {exc}", err=True)
        sys.exit(1)
    if "refused" in answer:
        click.echo(f"iim-relay: {answer.get('message')}", err=True)
        sys.exit(EXIT_STATUS.get(answer["refused"], 1))
    return answer


def _who(answer: dict[str, Any]) -> str:
    name = answer.get("name")
    return f"{answer['instance']} ({name})" if name else answer["instance"]


def _pause_line(p: dict[str, Any], more: str = " more") -> str:
    return (f"for {human(p['remaining'])}{more}, until {_when(p.get('until'))}"
            + (f": {p['reason']}" if p.get("reason") else ""))


def _stored_note(answer: dict[str, Any]) -> Optional[str]:
    if answer.get("stored"):
        return None
    return ("in effect, but NOT yet on disk: the relay keeps retrying, and keeps a copy in "
            "its runtime directory across a restart of the relay (not a reboot); "
            f"{answer.get('store_problem') or 'the write has not finished'}")


socket_options = [
    click.option("--config-file", "config_files", multiple=True, metavar="FILE",
                 help=_CONFIG_HELP),
    click.option("--control-socket", metavar="PATH", help=_SOCKET_HELP),
]


def _with_socket(fn):
    for opt in reversed(socket_options):
        fn = opt(fn)
    return fn


@click.command()
@click.argument("instance")
@click.option("--for", "duration", required=True, callback=_duration, metavar="DURATION",
              help=f"How long; units {UNITS_HELP}.  At most [detector] max_pause.")
@click.option("--reason", default="", metavar="TEXT",
              help="Why, one line: shown by `iim-relay status` and logged.")
@_with_socket
def pause(instance: str, duration: float, reason: str, config_files: Sequence[str],
          control_socket: Optional[str]) -> None:
    """Pause notifications for one instance from the host, for maintenance.

    For an operator draining the host or fixing the instance without logging
    into the guest.  The relay keeps reading the guest and shows what it
    sees, but sends Masakari no notification for INSTANCE (an instance uuid,
    or its libvirt domain name) until DURATION has passed or `iim-relay
    resume INSTANCE`.  This host pause is apart from a pause the guest asked
    for: the guest cannot end it, and resuming it leaves the guest's alone.
    It is kept across relay restarts and holds when the guest reboots.  A
    DURATION longer than [detector] max_pause is refused; pausing again
    replaces the end and reason.

    Exit status: 0 when the pause is in effect and on disk; 1 when no relay
    answers, INSTANCE is unknown to it, or the pause is in effect but could
    not be written to disk yet (the message says why); 2 for a bad or too
    long --for, or a bad --reason.

    \b
    Example:
      iim-relay pause 0d9f6c55-8a1e-4a8e-9b86-2f1d5c3a7e10 --for 2h --reason "disk swap"
      iim-relay pause instance-0000002a --for 30m
    """
    answer = _ask(config_files, control_socket, {"cmd": "pause", "instance": instance,
                                                  "seconds": duration, "reason": reason})
    click.echo(f"paused {_who(answer)} {_pause_line(answer['host_pause'], '')}")
    note = _stored_note(answer)
    if note:
        click.echo(f"iim-relay: {note}", err=True)
        sys.exit(1)


@click.command()
@click.argument("instance")
@_with_socket
def resume(instance: str, config_files: Sequence[str], control_socket: Optional[str]) -> None:
    """End the host's pause of one instance before it expires.

    The relay watches INSTANCE (an instance uuid, or its libvirt domain
    name) again at once: a check that is still failed is notified with the
    guest's next heartbeat.  A pause the guest asked for itself is not
    ended; the answer says when it ends.

    Exit status: 0 (also when there was no host pause); 1 when no relay
    answers, INSTANCE is unknown to it, or the end of the pause could not be
    written to disk yet.

    \b
    Example:
      iim-relay resume 0d9f6c55-8a1e-4a8e-9b86-2f1d5c3a7e10
    """
    answer = _ask(config_files, control_socket, {"cmd": "resume", "instance": instance})
    if answer.get("was_paused"):
        click.echo(f"resumed {_who(answer)}: detector {answer.get('state')}")
    else:
        click.echo(f"{_who(answer)} had no host pause: detector {answer.get('state')}")
    if answer.get("guest_pause"):
        click.echo(f"the guest's own pause still holds {_pause_line(answer['guest_pause'])}")
    note = _stored_note(answer)
    if note:
        click.echo(f"iim-relay: {note}", err=True)
        sys.exit(1)


def show_instance(instance: str, config_files: Sequence[str], control_socket: Optional[str],
                  as_json: bool) -> None:
    """``iim-relay status INSTANCE``."""
    answer = _ask(config_files, control_socket, {"cmd": "instance", "instance": instance})
    if as_json:
        click.echo(json.dumps(answer, indent=2, sort_keys=True, default=str))
    else:
        click.echo(format_detail(answer))


def _age(value: Any) -> str:
    return "-" if value is None else f"{human(float(value))} ago"


def format_detail(d: dict[str, Any]) -> str:
    """One instance in detail, as ``iim-relay status INSTANCE`` prints it."""
    inst = d.get("instance") or {}
    ch = inst.get("channel") or {}
    det = inst.get("detector") or {}
    lines = [f"Instance {d.get('uuid')}" + (f" ({d['name']})" if d.get("name") else "")]

    def row(label: str, value: Any) -> None:
        lines.append(f"  {label + ':':<16}{value}")

    row("domain", inst.get("domain_state") or "-")
    if ch:
        extra = f", last error: {ch['last_error']}" if ch.get("last_error") else ""
        row("channel", f"{ch.get('state')} for {human(ch.get('state_age') or 0)} "
            f"({ch.get('connects', 0)} connects{extra})")
    else:
        row("channel", "none")
    row("origin", inst.get("origin") or "-")
    row("path", ch.get("path") or "-")
    if inst.get("reason"):
        row("problem", inst["reason"] + (f" (fix: {inst['fix']})" if inst.get("fix") else ""))
    if det:
        row("detector", f"{det.get('state')}; hang detection {det.get('hang_detection')}")
        interval = det.get("interval")
        row("heartbeat", f"last {_age(inst.get('last_heartbeat_age'))}, interval "
            + (f"{interval:g}s, hang after {det.get('hang_after'):g}s" if interval else "-")
            + f", {inst.get('heartbeats', 0)} received")
        if det.get("agent_version") or det.get("boot_id"):
            row("agent", f"{det.get('agent_version') or '-'} (boot {det.get('boot_id') or '-'}"
                f", start {det.get('start_id') or '-'})")
        checks = det.get("checks") or {}
        row("checks", ", ".join(f"{k} {v}" for k, v in sorted(checks.items())) or "none reported")
        for key, who in (("host_pause", "host"), ("pause", "guest")):
            p = det.get(key)
            if p:
                row(f"paused ({who})", _pause_line(p))
        if not det.get("host_pause") and not det.get("pause"):
            row("paused", "no")
        inc = det.get("incident")
        if inc:
            row("incident", f"{inc.get('kind')}" + (f" {inc['check']}" if inc.get("check") else "")
                + f": {inc.get('reason')}" + ("" if inc.get("notified") else
                                            " (not notified: storm cap)"))
        if det.get("cooldown_remaining"):
            row("cooldown", f"{human(det['cooldown_remaining'])} left")
        if det.get("witness"):
            row("witness", f"{det['witness']}: {det.get('witness_detail') or '-'}")
        if det.get("agent_lost_for") is not None:
            row("agent lost", f"for {human(det['agent_lost_for'])} (the guest answers; "
                "not a VM failure)")
        if det.get("hang_held"):
            row("hang held", f"by the host-wide silence guard: {det['hang_held']}")
    w = inst.get("witnesses") or {}
    if w.get("last_event"):
        row("libvirt event", w["last_event"])
    if w.get("evidence"):
        row("evidence", w["evidence"])
    else:
        row("detector", "none yet (no channel seen)")
    notes = d.get("notifications") or []
    lines += ["", "Notifications (newest first; Masakari's answer):" if notes
              else "Notifications: none in the outbox"]
    for n in notes:
        answer = {"delivered": f"accepted (HTTP {n.get('last_status')}, notification "
                               f"{n.get('notification_uuid') or '-'})",
                  "dead": f"refused for good (HTTP {n.get('last_status')}: "
                          f"{n.get('last_error')}); `iim-relay requeue {n.get('id')}`",
                  "queued": f"queued, {n.get('attempts', 0)} attempts"
                            + (f", last: HTTP {n.get('last_status')} {n.get('last_error')}"
                               if n.get("attempts") else "")}.get(n.get("state"), n.get("state"))
        lines.append(f"  #{n.get('id')} {_when(n.get('created_at'))} {n.get('kind')}: "
                     f"{n.get('reason')}")
        lines.append(f"      {answer}")
    if d.get("notifications_error"):
        lines.append(f"  ({d['notifications_error']})")
    return "\n".join(lines)
