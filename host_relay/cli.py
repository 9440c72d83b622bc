"""The ``iim-relay`` command: run the relay, or ask a running one for its status.

Commands only parse and call: ``run`` reads the configuration and hands it to
:func:`host_relay.service.serve` (composition and signal handling live
there); ``status`` and ``requeue`` ask the running relay over its control
socket and print the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import click

import iim_protocol

LOG = logging.getLogger(__name__)

EXIT_CONFIG = 2

_CONFIG_HELP = ("Configuration file (oslo.config INI); may be given more than once, "
                "later files override earlier ones.  Without it /etc/iim/relay.conf "
                "(what the package installs) and /etc/iim/iim-relay.conf are read if present.")


def _conf_argv(config_files: Iterable[str]) -> list[str]:
    argv: list[str] = []
    for path in config_files:
        argv += ["--config-file", path]
    return argv


def _load(config_files: Sequence[str], *, to_run: bool = False, debug: bool = False):
    """(conf, settings) or exit 2 with the operator message on stderr.

    ``to_run``: also require a usable [masakari] group and set up logging.
    """
    from host_relay import conf as relay_conf

    try:
        conf = relay_conf.load(_conf_argv(config_files) + (["--debug"] if debug else []))
        settings = relay_conf.settings_from(conf)
        if to_run:
            relay_conf.check_masakari(conf)
            relay_conf.setup_logging(conf)
    except relay_conf.ConfigError as exc:
        click.echo(f"iim-relay: configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    return conf, settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(iim_protocol.__version__, "-V", "--version", prog_name="iim-relay")
def cli() -> None:
    """iim-relay: intrusive instance monitoring for OpenStack Masakari, compute-host side.

    The relay connects to every instance's guest channel (a UNIX socket QEMU
    listens on: hot-plugged through libvirt, or <socket_dir>/<uuid>.sock),
    runs a failure detector per instance, and reports failed instances to
    Masakari through a durable outbox.

    \b
    Commands:
      run      run the relay in the foreground (as systemd starts it)
      status   show what a running relay sees (all instances, or one in detail)
      pause    pause notifications for one instance from the host (maintenance)
      resume   end the host's pause of one instance
      requeue  send dead-lettered notifications again

    \b
    Example:
      iim-relay run --config-file /etc/iim/relay.conf
      iim-relay status
      iim-relay pause instance-0000002a --for 2h --reason "replacing a disk"
    """


@cli.command()
@click.option("--config-file", "config_files", multiple=True, metavar="FILE", help=_CONFIG_HELP)
@click.option("-v", "--debug", is_flag=True,
              help="Log debug messages too (as [DEFAULT] debug = true does).")
def run(config_files: Sequence[str], debug: bool) -> None:
    """Run the relay in the foreground until SIGTERM or SIGINT.

    Reads the configuration, opens the outbox in [DEFAULT] state_path, finds
    instance channels through libvirt (hot-plugging them) and in [channels]
    socket_dir, and delivers notifications to Masakari as configured in
    [masakari].  On SIGTERM it stops watching,
    closes the channels, gives an in-flight delivery up to shutdown_grace
    seconds, and exits 0; undelivered notifications stay in the outbox.

    Exit status: 0 after a clean shutdown, 2 for a configuration error
    (including a [masakari] group without a usable auth_type and credentials
    or endpoint), 1 for any other start-up failure (for example another relay
    already running).

    \b
    Example:
      iim-relay run --config-file /etc/iim/relay.conf
      iim-relay run --config-file /etc/iim/relay.conf --debug
    """
    from host_relay import conf as relay_conf

    conf, settings = _load(config_files, to_run=True, debug=debug)
    from host_relay.control import ControlError
    from host_relay.limits import raise_nofile_limit
    from host_relay.service import serve

    raise_nofile_limit()  # one descriptor per instance channel

    try:
        asyncio.run(serve(conf, settings, relay_conf.detector_config_from(conf)))
    except ControlError as exc:  # another relay is running: no traceback needed
        LOG.error("%s", exc)
        click.echo(f"iim-relay: {exc}", err=True)
        sys.exit(1)
    except relay_conf.ConfigError as exc:  # the outbox cannot be opened: file, cause, fix
        click.echo(f"iim-relay: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except Exception as exc:  # noqa: BLE001 - start-up failures end with one clear line
        LOG.exception("iim-relay failed")
        click.echo(f"iim-relay: {exc}", err=True)
        sys.exit(1)


@cli.command()
@click.argument("instance", required=False)
@click.option("--config-file", "config_files", multiple=True, metavar="FILE", help=_CONFIG_HELP)
@click.option("--control-socket", metavar="PATH",
              help="Control socket of the relay (default: <state_path>/control.sock).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
def status(instance: Optional[str], config_files: Sequence[str], control_socket: Optional[str],
           as_json: bool) -> None:
    """Show what the running relay sees, per instance and for delivery.

    Asks the relay on this host over its control socket (root or the relay's
    user only).  Per instance: channel state, age of the last heartbeat,
    detector state, the last failure reported and its delivery state.  Then
    the outbox (queued notifications, age of the oldest, dead letters) and
    frames the guests sent that were rejected.

    With INSTANCE (an instance uuid, or its libvirt domain name), that one
    instance in detail: channel origin and path, detector state, last
    heartbeat, checks, the open incident and its reason, pauses (the host's
    and the guest's: until when and why), and its notifications in the outbox
    with Masakari's answers.

    Exit status: 0, or 1 when no relay answers or it does not know INSTANCE.

    \b
    Example:
      iim-relay status
      iim-relay status instance-0000002a
      iim-relay status --json | jq '.outbox'
    """
    from host_relay.control import ControlError, request

    if instance is not None:
        from host_relay.cli_instance import show_instance

        show_instance(instance, config_files, control_socket, as_json)
        return

    if control_socket is None:
        _, settings = _load(config_files)
        control_socket = settings.control_socket
    try:
        snap = request(control_socket, {"cmd": "status"})
    except ControlError as exc:
        click.echo(f"iim-relay: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(snap, indent=2, sort_keys=True, default=str))
    else:
        click.echo(format_status(snap))


@cli.command()
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--all", "all_dead", is_flag=True, help="Re-queue every dead letter.")
@click.option("--config-file", "config_files", multiple=True, metavar="FILE", help=_CONFIG_HELP)
@click.option("--control-socket", metavar="PATH",
              help="Control socket of the relay (default: <state_path>/control.sock).")
def requeue(ids: Sequence[int], all_dead: bool, config_files: Sequence[str],
            control_socket: Optional[str]) -> None:
    """Send dead-lettered notifications again, after fixing their cause.

    Masakari refuses some notifications for reasons only an operator can
    fix: the host is not registered in a failover segment (400), or it is on
    maintenance (409).  The relay keeps those as dead letters, listed by
    `iim-relay status` with their ids.  Once the cause is fixed, re-queue
    them by id, or all at once; the relay delivers them at once.

    Exit status: 0, 1 when no relay answers, 2 when nothing was re-queued.

    \b
    Example:
      iim-relay requeue 17 18
      iim-relay requeue --all
    """
    from host_relay.control import ControlError, request

    if not ids and not all_dead:
        raise click.UsageError("name the dead letters' ids, or use --all")
    if control_socket is None:
        _, settings = _load(config_files)
        control_socket = settings.control_socket
    payload: dict[str, Any] = {"cmd": "requeue"}
    payload.update({"all": True} if all_dead else {"ids": list(ids)})
    try:
        answer = request(control_socket, payload)
    except ControlError as exc:
        click.echo(f"iim-relay: {exc}", err=True)
        sys.exit(1)
    if "error" in answer:
        click.echo(f"iim-relay: {answer['error']}", err=True)
        sys.exit(2)
    done, skipped = answer.get("requeued", []), answer.get("not_dead", [])
    click.echo(f"re-queued: {', '.join(map(str, done)) or 'none'}")
    if skipped:
        click.echo(f"not dead letters (already delivered, queued or unknown): "
                   f"{', '.join(map(str, skipped))}")
    if not done:
        sys.exit(2)


def _age(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


def format_status(snap: dict[str, Any]) -> str:
    """The human-readable status table."""
    lines = [f"iim-relay {snap.get('version')} on {snap.get('host')} "
             f"(pid {snap.get('pid')}, up {_age(snap.get('uptime'))})", ""]
    rows = [("INSTANCE", "CHANNEL", "ORIGIN", "HEARTBEAT", "DETECTOR", "LAST FAILURE",
             "DELIVERY")]
    bad = []
    notes = []
    for uuid, inst in sorted(snap.get("instances", {}).items()):
        ch = inst.get("channel") or {}
        chan = ch.get("state", "-")
        if ch.get("next_retry_in") is not None:
            chan += f" (retry {_age(ch['next_retry_in'])})"
        det = inst.get("detector") or {}
        fail = inst.get("last_failure") or {}
        failure = f"{fail.get('kind')} {_age(fail.get('age'))} ago" if fail else "-"
        domain = inst.get("libvirt") or {}
        state = str(det.get("state", "-"))
        if det.get("host_pause"):  # paused by `iim-relay pause`: say so, and for how long
            state += f" (host, {_age(det['host_pause'].get('remaining'))})"
        elif det.get("witness") and state in ("agent_lost", "cooldown", "failed"):
            state += f" ({det['witness']})"  # the witness that decided it
        elif det.get("hang_held"):
            state += " (hang held)"
        rows.append((uuid, chan, inst.get("origin") or "-", _age(inst.get("last_heartbeat_age")),
                     state, failure, fail.get("state", "-") if fail else "-"))
        if domain.get("reason"):
            notes.append(f"  {uuid} ({domain.get('name') or '?'}): {domain['reason']}"
                         + (f"\n    fix: {domain['fix']}" if domain.get("fix") else ""))
        dec = inst.get("decoder", {})
        thr = inst.get("throttle", {})
        if dec.get("bytes_skipped") or dec.get("frames_rejected") or thr.get("seconds"):
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(dec.get("rejected", {}).items()))
            bad.append(f"  {uuid}: {dec.get('bytes_skipped', 0)} bytes skipped, "
                       f"{dec.get('frames_rejected', 0)} frames rejected"
                       + (f" ({reasons})" if reasons else "")
                       + (f", throttled {thr.get('seconds')}s" if thr.get("seconds") else ""))
    if len(rows) == 1:
        lines.append("No instance channels found in " + str(snap.get("socket_dir")))
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    guard = snap.get("silence_guard") or {}
    if guard.get("engaged"):
        lines += ["", f"HOST-WIDE SILENCE: {guard.get('silent')} of {guard.get('armed')} armed "
                  f"instances silent; {guard.get('held')} hang notifications held until their "
                  "own witness confirms them or the silence clears"]
    ob = snap.get("outbox") or {}
    oldest = _age(ob.get("oldest_queued_age"))
    lines += ["", f"Outbox: {ob.get('depth', '?')} queued, oldest {oldest}, "
              f"{ob.get('retrying', 0)} retrying, {ob.get('dead', '?')} dead letters"]
    if ob.get("error"):
        lines.append(f"  (as read {_age(ob.get('read_age'))} ago: {ob['error']})")
    store = snap.get("store") or {}
    if store.get("pending_notifications") or store.get("pending_records"):
        lines.append(f"  not yet on disk: {store.get('pending_notifications')} notifications, "
                     f"{store.get('pending_records')} detector records")
    disk = store.get("disk_problem")
    if disk:
        lines += ["", f"OUTBOX NOT WRITABLE: {disk.get('path')}: {disk.get('error')} "
                  f"({disk.get('errno_name')})",
                  f"  fix: {disk.get('fix')}",
                  f"  {store.get('sent_directly', 0)} notifications sent straight to Masakari "
                  "meanwhile"]
    dead = snap.get("dead_letters")
    if isinstance(dead, list) and dead:
        lines += ["", "Dead letters (fix the cause, then `iim-relay requeue ID` or --all):"]
        for e in dead:
            lines.append(f"  #{e.get('id')} {e.get('instance_uuid')} {e.get('kind')} "
                         f"{_age(e.get('age'))} ago: HTTP {e.get('last_status')}: "
                         f"{e.get('last_error')}")
    lv = snap.get("libvirt") or {}
    if lv.get("enabled"):
        state = "connected" if lv.get("connected") else f"not connected ({lv.get('last_error')})"
        lines += ["", f"libvirt {lv.get('uri')}: {state}"]
        if lv.get("socket_dir_problem"):
            lines.append(f"  channel directory: {lv['socket_dir_problem']}")
    if notes:
        lines += ["", "Domains without the virtio channel:"] + notes
    if bad:
        lines += ["", "Rejected input:"] + bad
    if snap.get("ignored_files"):
        lines += ["", "Ignored files: " + ", ".join(snap["ignored_files"])]
    if snap.get("config_warnings"):
        lines += ["", "Configuration warnings (fix and restart the relay):"]
        lines += [f"  {w}" for w in snap["config_warnings"]]
    return "\n".join(lines)


def _add_instance_commands() -> None:
    from host_relay.cli_instance import pause, resume

    cli.add_command(pause)
    cli.add_command(resume)


_add_instance_commands()


def main(argv: Optional[Sequence[str]] = None) -> None:
    cli.main(args=argv, prog_name="iim-relay")


if __name__ == "__main__":
    main()
