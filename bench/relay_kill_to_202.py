"""Kill of a watched process inside a "guest" -> 202 from masakari-api, end to end.

The whole pipeline runs as in devtools/demo.py: a real masakari-api (sqlite,
noauth2, notification_delay_max = 0), ``iim-relay``, one
``devtools.ptybridge`` per instance standing in for QEMU's virtio-serial
chardev, and one ``iim-agent`` per instance watching a fresh copy of
``sleep`` with grace 0.

Masakari refuses a duplicate (same host, type and payload) for 180 s and the
relay's detector has a per-instance cooldown and storm cap, so every kill is
on a fresh instance (a new uuid, bridge and agent).  Instances are prepared
``--pool`` at a time; once the relay's status shows all of them armed with
their check ok, they are killed one by one, ``--gap`` s apart (nothing else
of the bench runs during a kill but a 5 ms poll of the outbox).  For each:

    t0        = time.time() right before os.kill(pid, SIGKILL)
    queued    = outbox row's created_at - t0  (the detector's decision; since core v2
                the writer thread commits it after that, inside the 202 figure)
    202       = outbox row's finished_at - t0 (the relay recorded masakari-api's 202)

Every notification is then looked up in masakari's GET /v1/notifications.

    python bench/relay_kill_to_202.py              # 100 kills
    python bench/relay_kill_to_202.py --kills 300 --pool 20

Bounded by --kills and --max-seconds; a kill without a 202 within
--kill-timeout counts as a miss.  It reports and exits 0.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Optional

import relay_common as rc

P50_TARGET_MS = 100.0
P99_TARGET_MS = 1000.0
CHECK = "app"
SLEEP = shutil.which("sleep") or "/bin/sleep"


class Instance:
    """One fresh guest: a pty bridge (QEMU's part), a watched process and an agent."""

    def __init__(self, workdir: Path, socket_dir: Path, n: int) -> None:
        self.uuid = str(uuid.uuid4())
        self.dir = workdir / f"i{n:04d}"
        self.dir.mkdir()
        self.sock = socket_dir / f"{self.uuid}.sock"
        self.port = self.dir / "port"
        self.name = f"iimk{n:04d}"  # the watched process's comm (<= 15 chars)
        self.bridge_log = self.dir / "ptybridge.log"
        self.bridge: Optional[subprocess.Popen] = None
        self.victim: Optional[subprocess.Popen] = None
        self.agent: Optional[subprocess.Popen] = None

    def spawn(self, argv: list, log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.dir, env=rc.env())

    def start_bridge(self) -> None:
        self.bridge = self.spawn([sys.executable, "-m", "devtools.ptybridge", "--socket",
                                  str(self.sock), "--link", str(self.port)], self.bridge_log)

    def relay_connected(self) -> bool:
        try:
            return "host connected" in self.bridge_log.read_text()
        except OSError:
            return False

    def start_guest(self) -> None:
        exe = self.dir / self.name
        shutil.copy(SLEEP, exe)
        self.victim = subprocess.Popen([str(exe), "100000"], stdin=subprocess.DEVNULL)
        conf = self.dir / "agent.yaml"
        conf.write_text(
            f"port: {self.port}\n"
            "heartbeat_interval: 1s\n"
            f"control_socket: {self.dir / 'agent.sock'}\n"
            "checks:\n"
            f"  - name: {CHECK}\n"
            f"    process: {self.name}\n"
            "    grace: 0\n"
        )
        self.agent = self.spawn([sys.executable, "-m", "guest_agent.cli", "run", "-c",
                                 str(conf)], self.dir / "agent.log")

    def stop(self) -> None:
        for proc in (self.agent, self.bridge):
            rc.stop_process(proc)
        if self.victim is not None:
            if self.victim.poll() is None:
                self.victim.kill()
            self.victim.wait(10)


def prepare(relay: rc.RelayProcess, pool: list[Instance], timeout: float) -> list[Instance]:
    """Start the pool's bridges and agents; return those the relay shows armed, check ok."""
    for inst in pool:
        inst.start_bridge()
    # Like QEMU with the relay attached: start the guest once the host end is connected.
    rc.wait_for("the relay to connect to every bridge",
                lambda: all(i.relay_connected() for i in pool), timeout, 0.05)
    for inst in pool:
        inst.start_guest()
    want = {i.uuid for i in pool}
    deadline = time.monotonic() + timeout
    armed: set[str] = set()
    while time.monotonic() < deadline:
        armed = relay.armed(relay.status(), CHECK) & want
        if armed == want:
            break
        time.sleep(0.2)
    return [i for i in pool if i.uuid in armed]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=100, help="how many kills (default 100)")
    ap.add_argument("--pool", type=int, default=10,
                    help="instances prepared and armed at a time (default 10)")
    ap.add_argument("--gap", type=float, default=0.3,
                    help="quiet time before each kill, s; a random 0-1 s is added (default 0.3)")
    ap.add_argument("--kill-timeout", type=float, default=10.0,
                    help="per kill: no 202 by then is a miss (default 10 s)")
    ap.add_argument("--arm-timeout", type=float, default=60.0,
                    help="per pool: time to connect and arm (default 60 s)")
    ap.add_argument("--max-seconds", type=float, default=1200.0,
                    help="whole-run bound (default 1200 s)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random wait")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    rc.bound_run(args.max_seconds)
    rng = random.Random(args.seed)

    workdir = Path(tempfile.mkdtemp(prefix="iimbench-kill-"))
    server = relay = None
    pool: list[Instance] = []
    queued_ms: list[float] = []
    accepted_ms: list[float] = []
    delivered: dict[str, dict] = {}  # uuid -> outbox row
    misses = not_armed = 0
    statuses: dict[str, int] = {}
    cli_checked = cli_agree = 0
    aborted = ""
    started = time.monotonic()
    info = rc.machine() + [("load average at start (1/5/15)", rc.load())]
    try:
        server = rc.start_masakari(workdir / "masakari")
        # min_uptime only delays hang detection; a failure frame notifies at once.
        relay = rc.RelayProcess(workdir / "relay", server.url, detector={"min_uptime": 2})
        relay.start()
        info.append(("relay pid", str(relay.pid)))
        n = 0
        while n < args.kills:
            pool = [Instance(workdir, relay.socket_dir, n + k)
                    for k in range(min(args.pool, args.kills - n))]
            n += len(pool)
            ready = prepare(relay, pool, args.arm_timeout)
            not_armed += len(pool) - len(ready)
            for inst in ready:
                time.sleep(args.gap + rng.random())  # any phase of the 1 s heartbeat
                assert inst.victim is not None
                t0 = time.time()
                os.kill(inst.victim.pid, signal.SIGKILL)
                row = relay.wait_finished(inst.uuid, args.kill_timeout)
                if row is None:
                    misses += 1
                    continue
                key = str(row["last_status"])
                statuses[key] = statuses.get(key, 0) + 1
                if row["state"] != "delivered":
                    misses += 1
                    continue
                queued_ms.append((row["created_at"] - t0) * 1000)
                accepted_ms.append((row["finished_at"] - t0) * 1000)
                delivered[inst.uuid] = dict(row)
            if ready and inst.uuid in delivered:
                # The same figure as `iim-relay status --json` shows it, once per pool.
                last = (relay.status_cli()["instances"].get(inst.uuid) or {}).get("last_failure")
                cli_checked += 1
                cli_agree += bool(last) and last.get("finished_at") == \
                    delivered[inst.uuid]["finished_at"]
            for inst in pool:
                inst.stop()
            pool = []
    except (rc.BenchTimeout, KeyboardInterrupt, TimeoutError) as exc:
        aborted = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - report what was measured, then the error
        aborted = traceback.format_exc()
    finally:
        signal.alarm(0)
        for inst in pool:
            inst.stop()
        in_masakari = 0
        if server is not None:
            try:
                notified = rc.masakari_notified(server)
                in_masakari = sum(
                    1 for u, row in delivered.items()
                    if (notified.get(u) or {}).get("notification_uuid")
                    == row["notification_uuid"]
                )
            except Exception as exc:  # noqa: BLE001 - reported below
                aborted += f"\nGET /v1/notifications failed: {exc}"
        if relay is not None:
            relay.stop()
        if server is not None:
            server.stop()
        info.append(("load average at end (1/5/15)", rc.load()))

    elapsed = time.monotonic() - started
    print("iim-relay: kill of a watched process -> 202 from masakari-api")
    rc.print_info(info + [
        ("masakari", "notification_delay_max = 0 (default 5 adds 0-5 s)"),
        ("kills asked / pool / gap", f"{args.kills} / {args.pool} / {args.gap}+U(0,1) s"),
        ("status codes recorded", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
         or "-"),
        ("status --json agrees (pools)", f"{cli_agree}/{cli_checked}"),
        ("run time (s)", f"{elapsed:.0f}"),
    ])
    rows = [
        ("n (202 recorded)", float(len(accepted_ms)), ".0f", "", None),
        ("misses (no 202 in time)", float(misses), ".0f", "0", misses == 0),
        ("not armed in time (skipped)", float(not_armed), ".0f", "0", not_armed == 0),
        ("found in GET /v1/notifications", float(in_masakari), ".0f", str(len(accepted_ms)),
         in_masakari == len(accepted_ms)),
        *rc.latency_rows("kill->queued", queued_ms),
        *rc.latency_rows("kill->202", accepted_ms, {50: P50_TARGET_MS, 99: P99_TARGET_MS}),
    ]
    rc.print_figures(rows)
    print(rc.DELAY_NOTE)
    if aborted:
        print(f"run stopped early: {aborted}")
    if args.keep or aborted:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
