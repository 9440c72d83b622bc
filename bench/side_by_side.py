"""iim-relay and masakari-monitors' introspective instance monitor, side by side on one guest.

One private libvirtd (QEMU TCG), one real masakari-api, one Debian 12 guest
per run (the cached image of devtools/vm_image.py with systemd, udev,
qemu-guest-agent and the current iim-agent .deb), defined as Nova defines an
instance with ``hw_qemu_guest_agent=yes`` (qemu-ga channel, VGA, serial
console, no iim channel).  ``iim-relay run`` and
``masakari-introspectiveinstancemonitor`` (masakari-monitors from PyPI in its
own virtualenv, its defaults: ping every 10 s, timeout 2 s, threshold 3) run
at once against both.  The relay hot-plugs its channel; udev in the guest
starts iim-agent, which watches ``iim-demo-app`` (a copy of sleep started as
a transient systemd unit).  The host drives the guest through qemu-ga's
``guest-exec``.

Scenarios (each on a fresh guest, ``--runs`` times):

- ``app_kill``: ``systemctl kill -s KILL iim-demo-app``;
- ``panic``: ``echo c > /proc/sysrq-trigger`` (no pvpanic device);
- ``iim_agent_kill``: iim-agent masked and killed with -9 (systemd cannot restart it);
- ``qga_stop``: ``systemctl stop qemu-guest-agent``;
- ``agents_stop``: ``systemctl stop iim-agent qemu-guest-agent`` (both agents, cleanly);
- ``reboot_busy``: ``systemctl reboot`` while one busy process per host core runs
  through the whole observation (at least ``REBOOT_OBSERVE`` seconds).

For each run: which monitor's notification reached masakari-api (iim's is
``LIFECYCLE``/``STOPPED_FAILED``, the peer's ``QEMU_GUEST_AGENT_ERROR``) and
the time from the event (the guest-exec call, or the panic line on the
console) to the notification first seen in ``GET /v1/notifications``, polled
every 0.1 s, within ``--observe`` seconds.

    sudo .venv/bin/python bench/side_by_side.py --runs 3
    sudo .venv/bin/python bench/side_by_side.py --scenarios panic --runs 1

Needs root (the libvirtd fixture runs QEMU as nobody), the masakari venv of
scripts/test and ``$IIM_MM_VENV`` (default ~/.cache/iim/masakari-monitors-venv)
with masakari-monitors 22.0.0 and libvirt-python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import libvirt  # noqa: E402

from devtools.masakari_server import start_server  # noqa: E402
from devtools.vm_image import ensure_base  # noqa: E402
from tests.host_relay.libvirt_fixture import start_daemon, stop_daemon  # noqa: E402
from tests.host_relay.test_libvirt_relay import RelayProcess  # noqa: E402
from tests.host_relay.vm_guest import (  # noqa: E402
    BOOT_TIMEOUT,
    DEMO_CMDLINE,
    guest_sh,
    guest_spawn,
    nova_domain_xml,
    pings,
    prepare,
    wait_console,
    wait_until,
)

SCENARIOS = ("app_kill", "panic", "iim_agent_kill", "qga_stop", "agents_stop", "reboot_busy")
REBOOT_OBSERVE = 120.0  # a busy host slows the reboot: watch until well after it is back
EXPECTED = {  # what a monitor that keeps both promises does
    "app_kill": "iim notifies",
    "panic": "both notify",
    "iim_agent_kill": "nobody notifies (the guest runs)",
    "qga_stop": "nobody notifies (the guest runs)",
    "agents_stop": "nobody notifies (the guest runs)",
    "reboot_busy": "nobody notifies (a reboot)",
}
ARM_TIMEOUT = 180.0
PEER_SETTLE = 25.0  # two of the peer's 10 s pings answered before the event
MM_VENV = Path(os.environ.get("IIM_MM_VENV") or os.path.expanduser(
    "~/.cache/iim/masakari-monitors-venv"))
def start_peer(workdir: Path, daemon, masakari_url: str, sock_dir: str) -> subprocess.Popen:
    conf = workdir / "masakari-monitors.conf"
    log = workdir / "masakari-monitors.log"
    conf.write_text(
        "[DEFAULT]\n"
        f"log_file = {log}\n"
        "debug = true\n"
        "[api]\n"
        "auth_type = none\n"
        f"endpoint = {masakari_url}/v1\n"
        "[libvirt]\n"
        f"connection_uri = {daemon.uri}\n"
        "[introspectiveinstancemonitor]\n"
        f"qemu_guest_agent_sock_path = {sock_dir}/.*\\.sock\n"
    )
    exe = MM_VENV / "bin" / "masakari-introspectiveinstancemonitor"
    if not exe.exists():
        raise SystemExit(f"{exe} is missing: python3 -m venv {MM_VENV} && {MM_VENV}/bin/pip "
                         "install masakari-monitors==22.0.0 libvirt-python")
    return subprocess.Popen([str(exe), "--config-file", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def one_run(scenario: str, ctx: dict, observe: float) -> dict:
    daemon, masakari, relay, base, deb = (ctx[k] for k in
                                          ("daemon", "masakari", "relay", "base", "deb"))
    uuid = str(uuidlib.uuid4())
    vmdir = prepare(daemon, base, deb, demo=True)
    sock = os.path.join(ctx["qga_dir"], f"org.qemu.guest_agent.0.instance-{uuid[:8]}.sock")
    dom = daemon.conn.defineXML(nova_domain_xml(f"instance-{uuid[:8]}", uuid, vmdir, sock,
                                                DEMO_CMDLINE))
    result = {"scenario": scenario, "uuid": uuid}
    hogs: list[subprocess.Popen] = []
    try:
        dom.create()
        started = time.monotonic()
        wait_until("qemu-ga answers", lambda: pings(dom), BOOT_TIMEOUT, 1.0)
        result["boot_to_qga"] = time.monotonic() - started
        result["demo_app"] = guest_sh(dom, "systemctl is-active iim-demo-app").strip()

        def armed() -> bool:
            det = (relay.instance(uuid) or {}).get("detector") or {}
            return det.get("state") == "armed"
        wait_until("iim armed", armed, ARM_TIMEOUT)
        result["boot_to_armed"] = time.monotonic() - started
        time.sleep(PEER_SETTLE)
        if scenario == "app_kill":
            t0 = time.time()
            guest_sh(dom, "systemctl kill -s KILL iim-demo-app")
        elif scenario == "panic":
            guest_spawn(dom, "sleep 0.5; echo c > /proc/sysrq-trigger")
            t0 = wait_console(vmdir, "Kernel panic", 30.0)
            if t0 is None:
                raise RuntimeError("no kernel panic on the console")
        elif scenario == "iim_agent_kill":
            t0 = time.time()
            guest_sh(dom, "systemctl mask --runtime iim-agent.service; "
                          "systemctl kill -s KILL iim-agent.service")
        elif scenario == "qga_stop":
            t0 = time.time()
            guest_spawn(dom, "systemctl stop qemu-guest-agent")
        elif scenario == "agents_stop":
            t0 = time.time()
            guest_spawn(dom, "systemctl stop iim-agent qemu-guest-agent")
        elif scenario == "reboot_busy":
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(os.cpu_count() or 2)]
            t0 = time.time()
            guest_spawn(dom, "systemctl reboot")
            observe = max(observe, REBOOT_OBSERVE)
        else:
            raise ValueError(scenario)
        seen: dict[str, float] = {}
        deadline = time.monotonic() + observe
        while time.monotonic() < deadline:
            for n in masakari.notifications_for(uuid):
                event = n["payload"].get("event")
                who = "iim" if event == "LIFECYCLE" else "peer"
                seen.setdefault(who, time.time() - t0)
                result.setdefault(f"{who}_payload", n["payload"])
            time.sleep(0.1)
        result["iim"] = seen.get("iim")
        result["peer"] = seen.get("peer")
        result["iim_state"] = ((relay.instance(uuid) or {}).get("detector") or {}).get("state")
    except Exception as exc:  # noqa: BLE001 - one broken run is reported, the bench goes on
        result["error"] = str(exc)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        daemon.remove(dom)
        shutil.rmtree(vmdir, ignore_errors=True)
    return result


def summarize(results: list[dict]) -> str:
    lines = ["| scenario | expected | iim notified | iim: event -> record | peer notified | "
             "peer: event -> record | runs with errors |", "|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        rs = [r for r in results if r["scenario"] == scenario]
        if not rs:
            continue
        ok = [r for r in rs if "error" not in r]

        def fig(who: str, ok: list[dict] = ok) -> tuple[str, str]:
            times = [r[who] for r in ok if r.get(who) is not None]
            told = f"{len(times)}/{len(ok)}"
            if not times:
                return told, "-"
            return told, (f"{min(times):.2f}-{max(times):.2f} s (median "
                          f"{statistics.median(times):.2f})")
        i, p = fig("iim"), fig("peer")
        lines.append(f"| {scenario} | {EXPECTED[scenario]} | {i[0]} | {i[1]} | {p[0]} | {p[1]} | "
                     f"{len(rs) - len(ok)} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--observe", type=float, default=75.0,
                        help="seconds to watch masakari-api after each event")
    parser.add_argument("--json", help="also write every run's result here")
    args = parser.parse_args(argv)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    workdir = Path(tempfile.mkdtemp(prefix="sbs-"))
    host = socket.gethostname()  # the peer's notification hostname (not configurable)
    base = ensure_base()
    out = subprocess.run([str(REPO / "packaging" / "build"), "-o", str(workdir / "dist")],
                         capture_output=True, text=True, check=True)
    deb = next(w for w in out.stdout.split() if os.path.basename(w).startswith("iim-agent_"))
    daemon = start_daemon()
    masakari = start_server(workdir / "masakari")
    masakari.create_host(host)
    relay = peer = None
    results: list[dict] = []
    try:
        relay = RelayProcess(daemon, workdir, host=host, endpoint=masakari.url).start()
        qga_dir = daemon.socket_dir("qga")
        peer = start_peer(workdir, daemon, masakari.url, qga_dir)
        ctx = {"daemon": daemon, "masakari": masakari, "relay": relay, "base": base,
               "deb": deb, "qga_dir": qga_dir}
        for run in range(args.runs):
            for scenario in scenarios:
                started = time.monotonic()
                r = one_run(scenario, ctx, args.observe)
                r["run"] = run + 1
                r["seconds"] = time.monotonic() - started
                results.append(r)
                print(json.dumps(r, default=str), flush=True)
        print(summarize(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    finally:
        if peer is not None:
            peer.terminate()
            try:
                peer.wait(10)
            except subprocess.TimeoutExpired:
                peer.kill()
        if relay is not None:
            relay.stop()
        masakari.stop()
        stop_daemon(daemon)
        print(f"logs in {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
