"""Kill-to-failure-frame latency of the guest agent.

One check with grace 0 watches one child process (a copy of sleep named
iimbench-kill).  For each of ``--kills`` rounds the bench waits until the
agent reports the check ok (a heartbeat showing it ok, or a ``recovered``
frame), waits a random 0..``--jitter`` s so kills land at every phase of the
agent's heartbeat and rescan timers, takes t0 = time.monotonic() right before
``os.kill(pid, SIGKILL)`` and t1 when the ``failure`` frame for the check is
decoded from the pty master.  The read of the frame (the pty transfer) is in
the measured path, as virtio-serial would be.  The process is then restarted
and the agent's rescan (``--rescan``, default 0.5 s) finds it again.

    python bench/agent_kill_latency.py                 # 200 kills under this Python
    python bench/agent_kill_latency.py --python .venv39/bin/python

A kill whose failure frame does not arrive within ``--kill-timeout`` counts
as a miss; the whole run stops at ``--max-seconds``.  It reports and exits 0.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import agent_common as ac

P99_TARGET_MS = 20.0
CHECK = "kill"
TARGET = "iimbench-kill"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200, help="how many kills (default 200)")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the agent")
    ap.add_argument("--rescan", type=float, default=0.5, help="rescan_interval (default 0.5)")
    ap.add_argument(
        "--jitter", type=float, default=1.0, help="random wait before each kill, max s (default 1)"
    )
    ap.add_argument("--kill-timeout", type=float, default=5.0, help="per kill and per recovery")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="whole-run bound")
    ap.add_argument("--seed", type=int, default=1, help="seed of the jitter")
    args = ap.parse_args()

    version = ac.python_version(args.python)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="iimbench-") as tmp:
        d = Path(tmp)
        host = ac.PtyHost(d / "port")
        target = ac.start_target(d, TARGET)
        children = [target]
        cfg = ac.write_config(
            d / "agent.yaml",
            host.link,
            d / "agent.sock",
            [(CHECK, TARGET, 0)],
            heartbeat=1.0,
            rescan=args.rescan,
        )
        info = [("agent python", f"{version} ({args.python})"), *ac.machine()]
        info.append(("load average at start (1/5/15)", ac.load()))
        agent = ac.start_agent(args.python, cfg, d / "agent.log")
        run_start = time.monotonic()
        deadline = run_start + args.max_seconds
        latencies: list[float] = []
        misses = no_recovery = 0
        reasons: dict[str, int] = {}
        try:
            ok, _ = host.read_until(
                lambda m: m.TYPE == "heartbeat" and dict(m.checks).get(CHECK) == "ok",
                timeout=min(15.0, args.max_seconds),
            )
            if ok is None:
                print("the agent never reported the check ok:\n" + (d / "agent.log").read_text())
                return 0
            for _ in range(args.kills):
                if time.monotonic() + args.jitter + args.kill_timeout > deadline:
                    break
                pause_until = time.monotonic() + rng.uniform(0.0, args.jitter)
                while time.monotonic() < pause_until:  # keep draining heartbeats meanwhile
                    host.read(pause_until - time.monotonic())
                t0 = time.monotonic()
                os.kill(target.pid, signal.SIGKILL)
                failure, _ = host.read_until(
                    lambda m: m.TYPE == "failure" and m.check == CHECK, args.kill_timeout
                )
                t1 = time.monotonic()
                target.wait(5)
                if failure is None:
                    misses += 1
                else:
                    latencies.append((t1 - t0) * 1000.0)
                    kind = failure.reason.replace(str(target.pid), "N")
                    reasons[kind] = reasons.get(kind, 0) + 1
                target = ac.start_target(d, TARGET)
                children.append(target)
                back, _ = host.read_until(
                    lambda m: (
                        (m.TYPE == "recovered" and m.check == CHECK)
                        or (m.TYPE == "heartbeat" and dict(m.checks).get(CHECK) == "ok")
                    ),
                    args.kill_timeout,
                )
                if back is None:
                    no_recovery += 1
                    break
        finally:
            ac.stop_agent(agent)
            ac.stop_targets(children)
            host.close()
        elapsed = time.monotonic() - run_start

    print(
        f"iim-agent kill latency: SIGKILL of a watched process to its failure frame "
        f"decoded from the pty (grace 0, rescan_interval {args.rescan:g}s)"
    )
    info += [
        ("load average at end (1/5/15)", ac.load()),
        ("run time", f"{elapsed:.1f} s"),
        ("kills asked / done", f"{args.kills} / {len(latencies) + misses}"),
        *((f"failure reason x{v}", k) for k, v in sorted(reasons.items())),
        ("recoveries not seen", str(no_recovery)),
    ]
    ac.print_info(info)
    print()
    lat = sorted(latencies)
    p99 = ac.percentile(lat, 99)
    ac.print_figures(
        [
            ("n (failure frames)", len(lat), "d", "", None),
            ("misses (no frame in time)", misses, "d", "0", misses == 0),
            ("p50 (ms)", ac.percentile(lat, 50), ".2f", "", None),
            ("p90 (ms)", ac.percentile(lat, 90), ".2f", "", None),
            ("p99 (ms)", p99, ".2f", f"< {P99_TARGET_MS:g}", bool(lat) and p99 < P99_TARGET_MS),
            ("max (ms)", lat[-1] if lat else float("nan"), ".2f", "", None),
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
