"""The ``iim-agent`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Optional

import click

from guest_agent.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    CheckConfig,
    ConfigError,
    accepted_keys,
    load_config,
)
from guest_agent.control import AgentNotRunning, ControlError, request
from guest_agent.durations import format_duration, parse_duration
from iim_protocol import __version__
from iim_protocol.messages import MAX_PAUSE_SECONDS, MAX_TEXT_BYTES

LOG = logging.getLogger(__name__)

EXIT_CONFIG = 2  # the configuration is wrong
EXIT_NO_AGENT = 3  # status/pause/resume found no running agent
EXIT_FAILED = 1  # anything else

NOTHING_WATCHED = (
    "no checks are configured: the agent watches nothing inside this VM (it still "
    "heartbeats, so the host sees a hung guest, but a failed application goes unseen); "
    "add a check, e.g. `checks: [{name: web, process: nginx}]`"
)

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    default=None,
    metavar="FILE",
    help=f"Configuration file (default {DEFAULT_CONFIG_PATH}).",
)


def _load(config_path: Optional[str], must_exist: bool) -> AgentConfig:
    """Load the config; a missing default file means the defaults unless must_exist."""
    path = config_path or DEFAULT_CONFIG_PATH
    if config_path is None and not must_exist and not os.path.exists(path):
        return AgentConfig()
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)


def _call(config_path: Optional[str], payload: dict[str, Any]) -> dict[str, Any]:
    config = _load(config_path, must_exist=False)
    try:
        return request(config.control_socket, payload)
    except AgentNotRunning as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_NO_AGENT)
    except ControlError as exc:
        click.echo(f"iim-agent: {exc}", err=True)
        sys.exit(EXIT_FAILED)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="iim-agent")
def main() -> None:
    """Watch processes inside this VM and report them to the host.

    iim-agent runs inside an OpenStack instance.  It watches the processes its
    configuration names and writes heartbeats, failures and recoveries to a
    virtio-serial port (or a serial tty), where iim-relay on the compute host
    turns a failure into a Masakari notification.

    \b
    Commands:
      run            run the agent (normally started by systemd)
      check-config   validate the configuration file
      status         show what the running agent sees
      pause          suspend notifications for maintenance
      resume         end a pause early
      beat           send a heartbeat for a heartbeat check

    \b
    Example /etc/iim/agent.yaml:
      port: /dev/virtio-ports/org.openstack.iim.0
      heartbeat_interval: 1s
      checks:
        - name: web
          process: nginx        # name as `ps -o comm` shows it
          min_count: 2
          grace: 5s
        - name: app
          cmdline: 'gunicorn .*myapp'   # regex searched in the command line
        - name: db
          pidfile: /run/postgresql/main.pid
        - name: health
          http: http://127.0.0.1:8080/healthz   # also tcp, exec, heartbeat, file
          period: 5s
          timeout: 2s
          failures: 3
    """


@main.command()
@config_option
@click.option("-v", "--debug", is_flag=True, help="Log debug messages too.")
def run(config_path: Optional[str], debug: bool) -> None:
    """Run the agent in the foreground, logging to stderr.

    The agent waits for its port to appear, sends hello and a heartbeat every
    heartbeat_interval, and reports a check as failed when fewer than
    min_count processes match for longer than its grace.  SIGTERM or SIGINT
    sends goodbye and exits 0; SIGHUP re-reads the configuration (a broken
    file is logged and the running configuration kept).

    Exit status: 0 after SIGTERM or SIGINT, 2 when the configuration is
    invalid, 1 when the agent cannot start.

    \b
    Example:
      iim-agent run -c /etc/iim/agent.yaml --debug
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = _load(config_path, must_exist=False)
    if config.source == "<defaults>":
        LOG.warning("%s not found: running with defaults and no checks", DEFAULT_CONFIG_PATH)
    elif not config.checks:
        LOG.warning("%s: %s", config.source, NOTHING_WATCHED)
    from guest_agent.agent import Agent  # keeps check-config and status light

    path = config_path or (None if config.source == "<defaults>" else DEFAULT_CONFIG_PATH)
    try:
        agent = Agent(config, config_path=path)
        code = agent.run()
    except RuntimeError as exc:
        LOG.error("%s", exc)
        sys.exit(EXIT_FAILED)
    sys.exit(code)


@main.command("check-config")
@config_option
def check_config(config_path: Optional[str]) -> None:
    """Validate the configuration file and summarise it.

    Every problem is printed as FILE:LINE: KEY: what is wrong and what to
    write instead.  Exits 0 and prints OK when the file is valid, 2 if not.

    \b
    Example:
      iim-agent check-config -c /etc/iim/agent.yaml
    """
    config = _load(config_path, must_exist=True)
    click.echo(
        f"OK: {config.source}: {len(config.checks)} checks, port {config.port}, "
        f"heartbeat every {format_duration(config.heartbeat_interval)}"
    )
    for c in config.checks:
        click.echo(f"  {c.name}: {c.kind} {c.target!r}, {_summary(c)}")
    if any(c.kind == "heartbeat" for c in config.checks):
        click.echo(f"  heartbeats are received on {config.notify_socket}")
    if not config.checks:
        click.echo(f"WARNING: {NOTHING_WATCHED}")


def _summary(c: CheckConfig) -> str:
    """The keys that matter for this kind of check, with their values."""
    parts = []
    for key in accepted_keys(c.kind):
        value = getattr(c, key)
        if key in ("status", "user") and not value:
            continue
        if key == "start_delay" and not value:
            continue
        if isinstance(value, float):
            value = format_duration(value)
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        parts.append(f"{key} {value}")
    if c.is_probe:
        if c.kind == "heartbeat":
            parts.append(f"fails after {format_duration(c.start_delay + c.timeout)} without a beat")
        elif c.kind == "file":
            parts.append(f"fails within {format_duration(c.max_age + c.timeout)} of going stale")
        else:
            bound = c.start_delay + c.failures * c.period + c.timeout
            parts.append(f"a dead target fails within {format_duration(bound)}")
    return ", ".join(parts)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
def status(config_path: Optional[str], as_json: bool) -> None:
    """Show the running agent's checks, port and counters.

    For each check: its state (starting, ok, failed), the pids that match and
    when it last changed; for the port: whether a host is connected, how
    many frames were sent and dropped, and what the host sent (sync requests
    received and answered, frames rejected, other messages ignored).  Exits 3
    when no agent is running.

    \b
    Example:
      iim-agent status --json
    """
    st = _call(config_path, {"cmd": "status"})["status"]
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
        return
    port, agent = st["port"], st["agent"]
    host = "host connected" if port["host_connected"] else f"no host ({port['state']})"
    click.echo(f"iim-agent {agent['version']} pid {agent['pid']}, up {agent['uptime']:.0f}s")
    click.echo(
        f"port {port['path']}: {host}; frames sent {port['frames_sent']}, "
        f"dropped {port['frames_dropped']}"
    )
    hi = st.get("host_input")
    if hi:
        click.echo(
            f"from host: {hi['syncs_received']} syncs ({hi['answers']} answered, "
            f"{hi['coalesced']} coalesced), {hi['frames_rejected']} frames rejected, "
            f"{hi['ignored']} other messages ignored"
        )
    if st["pause"]:
        left = format_duration(st["pause"]["remaining"])
        click.echo(f"paused for {left}: {st['pause']['reason']}")
    for c in st["checks"]:
        probe = c.get("probe")
        if probe and probe["probe"] == "heartbeat":
            age = probe["beat_age"]
            what = "heartbeat: " + ("none yet" if age is None else f"last beat {age:.1f}s ago")
            if probe["app_status"]:
                what += f" ({probe['app_status']})"
        elif probe:
            what = f"{probe['probe']}: {probe['last'] or 'not yet probed'}"
        else:
            what = "pids " + (",".join(str(p) for p in c["pids"]) or "-")
        line = f"  {c['name']:<20} {c['state']:<9} {what}  since {c['last_change']}"
        if c["reason"]:
            line += f"  ({c['reason']})"
        click.echo(line)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not 0 < seconds <= MAX_PAUSE_SECONDS:
        raise click.BadParameter(
            f"must be more than 0 and at most {format_duration(MAX_PAUSE_SECONDS)}"
        )
    return seconds


@main.command()
@config_option
@click.option(
    "--for",
    "duration",
    required=True,
    callback=_duration,
    metavar="DURATION",
    help="How long, e.g. 30s, 10m, 2h (at most 7d).",
)
@click.option("--reason", default="", help="Why, for the host's log (one line).")
def pause(config_path: Optional[str], duration: float, reason: str) -> None:
    """Pause notifications for maintenance inside this VM.

    The agent keeps watching and reporting, and tells the host to suppress
    Masakari notifications for DURATION.  The pause ends by itself, or with
    `iim-agent resume`.  The host may shorten it to its own maximum
    ([detector] max_pause in iim-relay's configuration).

    Exit status: 0; 2 for a bad --for, --reason or configuration file; 3 when
    no agent is running.

    \b
    Example:
      iim-agent pause --for 10m --reason "upgrading nginx"
    """
    if len(reason.encode("utf-8")) > MAX_TEXT_BYTES or not reason.isprintable():
        raise click.BadParameter(
            f"at most {MAX_TEXT_BYTES} bytes on one line", param_hint="--reason"
        )
    answer = _call(config_path, {"cmd": "pause", "duration": duration, "reason": reason})
    sent = "" if answer.get("sent") else " (no host connected now; sent when it connects)"
    click.echo(f"paused for {format_duration(answer['duration'])}{sent}")


@main.command()
@config_option
def resume(config_path: Optional[str]) -> None:
    """End a pause before it expires.

    The host notifies Masakari about this instance again as soon as it
    receives the resume.

    Exit status: 0 (also when no pause was active); 2 for a bad configuration
    file; 3 when no agent is running.

    \b
    Example:
      iim-agent resume
    """
    answer = _call(config_path, {"cmd": "resume"})
    click.echo("resumed" if answer.get("was_paused") else "resumed (no pause was active)")


@main.command()
@config_option
@click.argument("name")
@click.option("--status", "app_status", default="", help="A short text shown with the check.")
def beat(config_path: Optional[str], name: str, app_status: str) -> None:
    """Tell the agent that heartbeat check NAME is alive.

    NAME is the `heartbeat:` value of a check.  For scripts and cron jobs:
    run it after each successful pass.  Root may beat any check; another
    user only the checks whose `user:` it is.  An application can send the
    same thing itself as an sd_notify datagram (WATCHDOG=1) to the agent's
    notify_socket.

    Exit status: 0 when sent; 2 when no heartbeat check is named NAME (or
    the configuration is bad); 3 when no agent listens; 1 for anything else.

    \b
    Example (crontab):
      */5 * * * * /usr/local/bin/batch-run && iim-agent beat batch
    """
    from guest_agent.probes.notify import send_beat

    config = _load(config_path, must_exist=False)
    names = sorted(c.target for c in config.checks if c.kind == "heartbeat")
    if name not in names:
        known = ", ".join(names) or "none"
        click.echo(f"iim-agent: {config.source}: no heartbeat check `heartbeat: {name}` "
                   f"(configured: {known})", err=True)
        sys.exit(EXIT_CONFIG)
    if len(app_status.encode("utf-8")) > MAX_TEXT_BYTES or not app_status.isprintable():
        raise click.BadParameter(f"at most {MAX_TEXT_BYTES} bytes on one line",
                                 param_hint="--status")
    try:
        send_beat(config.notify_socket, name, app_status)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        click.echo(f"no iim-agent is listening for heartbeats (notify socket "
                   f"{config.notify_socket}: {exc.strerror})", err=True)
        sys.exit(EXIT_NO_AGENT)
    except OSError as exc:
        click.echo(f"iim-agent: cannot send to {config.notify_socket}: "
                   f"{exc.strerror or exc}", err=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
