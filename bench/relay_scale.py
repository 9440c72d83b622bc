"""Relay CPU and memory with many instances at 1 Hz, and crash detection under that load.

One process (bench/relay_guestsim.py) simulates the guests: ``--instances``
UNIX sockets listening like QEMU's virtio-serial chardevs, each writing a
hello and then a heartbeat every second (random phase) once the relay has
connected.  ``iim-relay run`` is started as a subprocess against a real
masakari-api (sqlite, noauth2, notification_delay_max = 0).

1. Wait until the relay's status shows every instance armed.
2. Over ``--seconds``: the relay's CPU (utime+stime delta from /proc/PID/stat,
   all threads) as % of one core, and its VmRSS sampled every second; the
   heartbeats it decoded (status before/after) against what was sent.
3. Crash detection under that load: a failure frame on ``--failures``
   distinct random instances, ~1 s apart.  Latency = outbox created_at
   (the detector's decision; the commit follows in the writer thread) minus the simulator's
   time.time() right before it wrote the frame, and finished_at (the relay
   recorded the 202) minus the same.  All on this machine's wall clock.
4. The same with one instance (``--baseline``, on by default): a fresh
   instance per failure (remove, add, wait armed), since Masakari refuses a
   duplicate for 180 s and the detector has a cooldown.

    python bench/relay_scale.py                              # 2000 instances, 60 s
    python bench/relay_scale.py --instances 500 --seconds 30
    python bench/relay_scale.py --profile /tmp/relay.prof    # cProfile of the relay

Bounded by --max-seconds.  It reports and exits 0.
"""

from __future__ import annotations

import argparse
import pstats
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import relay_common as rc

CPU_TARGET = 25.0  # % of one core
SIM = Path(__file__).resolve().parent / "relay_guestsim.py"


class Sim:
    """bench/relay_guestsim.py as a subprocess, driven over its stdin/stdout."""

    def __init__(self, socket_dir: Path, instances: int, seed: int, log: Path) -> None:
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(SIM), "--socket-dir", str(socket_dir),
                 "--instances", str(instances), "--seed", str(seed)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                env=rc.env())
        ready = self._line()
        if not ready.startswith("ready"):
            raise RuntimeError(f"simulator did not start: {ready!r} (see {log})")
        self.uuids: list[str] = self._line().split()[1:]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator exited ({self.proc.poll()})")
        return line.strip()

    def ask(self, command: str) -> list[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line().split()

    def stats(self) -> dict[str, float]:
        _, hb, conn, lag, cpu = self.ask("stats")
        return {"heartbeats": int(hb), "connected": int(conn), "max_lag_ms": float(lag),
                "cpu": float(cpu)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                pass
        rc.stop_process(self.proc)


def frames_ok(snapshot: dict) -> int:
    return sum((inst.get("decoder") or {}).get("frames_ok", 0)
               for inst in snapshot.get("instances", {}).values())


def whole_state(snapshot: dict, uuids: set[str]) -> int:
    """Instances whose last heartbeat carried the whole state (a start id: protocol 0.2)."""
    return sum(1 for u, inst in snapshot.get("instances", {}).items()
               if u in uuids and ((inst.get("detector") or {}).get("start_id")))


def wait_armed(relay: rc.RelayProcess, want: set[str], timeout: float,
               step: float) -> set[str]:
    deadline = time.monotonic() + timeout
    armed: set[str] = set()
    while True:
        armed = relay.armed(relay.status()) & want
        if armed == want or time.monotonic() >= deadline:
            return armed
        time.sleep(step)


def run_pass(args: argparse.Namespace, server: Any, workdir: Path, instances: int,
             seconds: float, profile: Optional[Path]) -> dict[str, Any]:
    """One relay, one simulator; returns the figures (partial if something failed)."""
    res: dict[str, Any] = {"instances": instances, "queued": [], "accepted": [],
                           "misses": 0, "error": ""}
    relay = rc.RelayProcess(workdir, server.url, nofile=args.nofile, profile=profile)
    sim = None
    rng = random.Random(args.seed)
    try:
        sim = Sim(relay.socket_dir, instances, args.seed, workdir / "guestsim.log")
        t_start = time.monotonic()
        relay.start()
        res["pid"] = relay.pid
        armed = wait_armed(relay, set(sim.uuids), args.arm_timeout, 1.0)
        res["armed"] = len(armed)
        res["arm_seconds"] = time.monotonic() - t_start
        res["fds"] = rc.open_fds(relay.pid)
        res["nofile"] = rc.nofile_limit(relay.pid)
        if len(armed) < instances:
            res["error"] = (f"only {len(armed)} of {instances} armed after "
                            f"{args.arm_timeout:.0f} s; relay log:\n{relay.log_tail(15)}")

        # -- CPU and RSS over the window (nothing asks the relay anything meanwhile) --
        time.sleep(2.0)
        snap0, ts0 = relay.status(), time.monotonic()
        sim0, tsim0 = sim.stats(), time.monotonic()
        time.sleep(1.0)  # let the status call's own cost drain out of the window
        t0, cpu0 = time.monotonic(), rc.cpu_seconds(relay.pid)
        rss = [rc.rss_bytes(relay.pid)]
        load0 = rc.load()
        while time.monotonic() - t0 < seconds:
            time.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - t0))))
            rss.append(rc.rss_bytes(relay.pid))
        t1, cpu1 = time.monotonic(), rc.cpu_seconds(relay.pid)
        load1 = rc.load()
        sim1, tsim1 = sim.stats(), time.monotonic()
        time.sleep(1.0)
        snap1, ts1 = relay.status(), time.monotonic()
        window = t1 - t0
        res.update(
            window=window, cpu_pct=(cpu1 - cpu0) / window * 100,
            rss_start=rss[0] / 2**20, rss_end=rss[-1] / 2**20, rss_max=max(rss) / 2**20,
            load=f"{load0} -> {load1}",
            sim_cpu_pct=(sim1["cpu"] - sim0["cpu"]) / (tsim1 - tsim0) * 100,
            sim_hb_rate=(sim1["heartbeats"] - sim0["heartbeats"]) / (tsim1 - tsim0),
            sim_lag_ms=sim1["max_lag_ms"],
            armed_after=len(relay.armed(snap1) & set(sim.uuids)),
            whole_state=whole_state(snap1, set(sim.uuids)),
        )
        # Frames the relay decoded per second (between the two status calls) vs. sent.
        decoded_rate = (frames_ok(snap1) - frames_ok(snap0)) / (ts1 - ts0)
        res["frames_ratio"] = decoded_rate / max(res["sim_hb_rate"], 1e-9)

        # -- crash detection under this load ----------------------------------------
        live = list(sim.uuids)
        targets = rng.sample(live, min(args.failures, len(live)))
        for k in range(args.failures):
            if k < len(targets):
                target = targets[k]
            else:  # fewer instances than failures: a fresh instance for each
                sim.ask(f"remove {live[0]}")
                live[0] = target = sim.ask("add")[1]
                if not wait_armed(relay, {target}, args.arm_timeout, 0.05):
                    res["misses"] += 1
                    continue
                time.sleep(rng.random())  # any phase of the heartbeats
            begin = time.monotonic()
            reply = sim.ask(f"fail {target}")
            if reply[2] == "none":  # not connected: counts as a miss
                res["misses"] += 1
                continue
            t_write = float(reply[2])
            row = relay.wait_finished(target, args.kill_timeout)
            if row is None or row["state"] != "delivered":
                res["misses"] += 1
            else:
                res["queued"].append((row["created_at"] - t_write) * 1000)
                res["accepted"].append((row["finished_at"] - t_write) * 1000)
                res.setdefault("delivered", {})[target] = row["notification_uuid"]
            codes = res.setdefault("codes", {})
            if row is not None:
                codes[str(row["last_status"])] = codes.get(str(row["last_status"]), 0) + 1
            time.sleep(max(0.0, args.spacing - (time.monotonic() - begin)))
        rows = relay.entries()
        res["hangs"] = sum(1 for r in rows if r["kind"] != "process_failure")
        res["dead"] = sum(1 for r in rows if r["state"] == "dead")
        notified = rc.masakari_notified(server)
        res["in_masakari"] = sum(1 for u, n in res.get("delivered", {}).items()
                                 if (notified.get(u) or {}).get("notification_uuid") == n)
    except (rc.BenchTimeout, KeyboardInterrupt, TimeoutError):
        res["error"] += f"\n{traceback.format_exc(limit=1)}"
        raise
    except Exception:  # noqa: BLE001 - report what was measured, then the error
        res["error"] += f"\n{traceback.format_exc()}"
    finally:
        if sim is not None:
            sim.stop()
        relay.stop()
    return res


def figures(res: dict[str, Any], cpu_target: bool) -> list[tuple]:
    nan = float("nan")
    n = res["instances"]
    cpu = res.get("cpu_pct", nan)
    rows = [
        ("instances armed", float(res.get("armed", 0)), ".0f", str(n), res.get("armed") == n),
        ("time to arm all (s)", res.get("arm_seconds", nan), ".1f", "", None),
        ("relay open fds", float(res.get("fds", 0)), ".0f", "", None),
        ("window (s)", res.get("window", nan), ".1f", "", None),
        ("relay CPU (% of one core)", cpu, ".2f", f"< {CPU_TARGET:g}" if cpu_target else "",
         (cpu < CPU_TARGET) if cpu_target else None),
        ("relay RSS start (MB)", res.get("rss_start", nan), ".1f", "", None),
        ("relay RSS end (MB)", res.get("rss_end", nan), ".1f", "", None),
        ("relay RSS max (MB)", res.get("rss_max", nan), ".1f", "", None),
        ("heartbeats sent per s", res.get("sim_hb_rate", nan), ".1f", "", None),
        ("heartbeats decoded / sent", res.get("frames_ratio", nan), ".3f", "", None),
        ("still armed after the window", float(res.get("armed_after", 0)), ".0f", str(n),
         res.get("armed_after") == n),
        ("sending the whole state (0.2)", float(res.get("whole_state", 0)), ".0f", str(n),
         res.get("whole_state") == n),
        ("simulator CPU (% of one core)", res.get("sim_cpu_pct", nan), ".1f", "", None),
        ("simulator max timer lag (ms)", res.get("sim_lag_ms", nan), ".1f", "", None),
        ("false hang notifications", float(res.get("hangs", 0)), ".0f", "0",
         res.get("hangs", 0) == 0),
        ("failures delivered (202)", float(len(res["accepted"])), ".0f", "", None),
        ("failures missed", float(res["misses"]), ".0f", "0", res["misses"] == 0),
        ("found in GET /v1/notifications", float(res.get("in_masakari", 0)), ".0f",
         str(len(res["accepted"])), res.get("in_masakari", 0) == len(res["accepted"])),
        *rc.latency_rows("failure->queued", res["queued"]),
        *rc.latency_rows("failure->202", res["accepted"]),
    ]
    return rows


def print_profile(path: Path, top: int) -> None:
    if not path.exists():
        print(f"no profile written at {path}")
        return
    print(f"\ncProfile of the relay ({path}), top {top} by own time:")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)
    print(f"top {top} by cumulative time:")
    stats.sort_stats("cumulative").print_stats(top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=2000, help="simulated instances (2000)")
    ap.add_argument("--seconds", type=float, default=60.0, help="CPU/RSS window (60 s)")
    ap.add_argument("--failures", type=int, default=20, help="failure frames sent (20)")
    ap.add_argument("--spacing", type=float, default=1.0, help="between failures, s (1)")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="also run with --instances 1 and print both (default on)")
    ap.add_argument("--baseline-seconds", type=float, default=10.0,
                    help="CPU/RSS window of the 1-instance run (10 s)")
    ap.add_argument("--arm-timeout", type=float, default=180.0, help="to arm all (180 s)")
    ap.add_argument("--kill-timeout", type=float, default=10.0,
                    help="per failure: no 202 by then is a miss (10 s)")
    ap.add_argument("--nofile", type=int, default=None,
                    help="soft RLIMIT_NOFILE for the relay (default: inherited)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="run the relay of the main pass under cProfile, write stats here")
    ap.add_argument("--max-seconds", type=float, default=1200.0, help="whole-run bound")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    rc.bound_run(args.max_seconds)

    workdir = Path(tempfile.mkdtemp(prefix="iimbench-scale-"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    info = rc.machine() + [
        ("ulimit -n here (soft / hard)", f"{soft} / {hard}"),
        ("load average at start (1/5/15)", rc.load()),
    ]
    passes: list[dict[str, Any]] = []
    aborted = ""
    server = None
    started = time.monotonic()
    try:
        server = rc.start_masakari(workdir / "masakari")
        passes.append(run_pass(args, server, workdir / f"n{args.instances}", args.instances,
                               args.seconds, args.profile))
        if args.baseline and args.instances != 1:
            passes.append(run_pass(args, server, workdir / "n1", 1, args.baseline_seconds,
                                   None))
    except (rc.BenchTimeout, KeyboardInterrupt, TimeoutError) as exc:
        aborted = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - report what was measured, then the error
        aborted = traceback.format_exc()
    finally:
        signal.alarm(0)
        if server is not None:
            server.stop()
    info += [("load average at end (1/5/15)", rc.load()),
             ("masakari", "notification_delay_max = 0 (default 5 adds 0-5 s)"),
             ("run time (s)", f"{time.monotonic() - started:.0f}")]

    print("iim-relay: CPU and RSS with simulated instances at 1 Hz; crash detection under load")
    rc.print_info(info)
    for res in passes:
        print()
        lim = res.get("nofile", ("?", "?"))
        rc.print_info([
            (f"-- instances = {res['instances']}", ""),
            ("relay pid", str(res.get("pid", "?"))),
            ("relay max open files (soft/hard)", f"{lim[0]} / {lim[1]}"),
            ("load during the window (1/5/15)", res.get("load", "?")),
            ("masakari status codes recorded",
             ", ".join(f"{k}: {v}" for k, v in sorted(res.get("codes", {}).items())) or "-"),
        ])
        rc.print_figures(figures(res, cpu_target=res["instances"] == args.instances))
        if res["error"].strip():
            print(f"problems in this pass: {res['error'].strip()}")
    if len(passes) == 2:
        big, one = passes
        print(f"crash detection: {big['instances']} instances vs 1 instance (ms)")
        print(f"{'':<{rc.LABEL_WIDTH}} {big['instances']:>10} {1:>10}")
        for label, key in (("failure->queued", "queued"), ("failure->202", "accepted")):
            for p in (50, 90, 99):
                a = rc.percentile(sorted(big[key]), p)
                b = rc.percentile(sorted(one[key]), p)
                print(f"{label + f' p{p}':<{rc.LABEL_WIDTH}} {a:>10.1f} {b:>10.1f}")
        print()
    print(rc.DELAY_NOTE)
    if args.profile is not None:
        print_profile(args.profile, 25)
    if aborted:
        print(f"run stopped early: {aborted}")
    if args.keep or aborted or any(r["error"].strip() for r in passes):
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
