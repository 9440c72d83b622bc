"""Memory and CPU of the running guest agent watching 10 processes.

Runs the real agent (``PYTHON -m guest_agent.cli run -c CFG``, INFO logging)
with heartbeat_interval 1 s and 10 checks, each matching one child process
(copies of sleep named iimbench-0..9), against a pty that this script drains
the whole time so the agent's writes never block.  After a warm-up it samples
the agent's RSS (VmRSS) every second and its CPU time (utime+stime from
/proc/PID/stat, cross-checked with schedstat) at the start and end of the
measured window.

    python bench/agent_resources.py                  # 60 s under this Python
    python bench/agent_resources.py --python .venv39/bin/python

It reports and exits 0; it asserts nothing about the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import agent_common as ac

RSS_TARGET_MB = 25.0
CPU_TARGET_PCT = 0.2
N_CHECKS = 10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="measured window (default 60)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the agent")
    ap.add_argument(
        "--rescan",
        type=float,
        default=5.0,
        help="rescan_interval of the agent (default 5, the agent's default)",
    )
    args = ap.parse_args()

    version = ac.python_version(args.python)
    with tempfile.TemporaryDirectory(prefix="iimbench-") as tmp:
        d = Path(tmp)
        host = ac.PtyHost(d / "port")
        names = [f"iimbench-{i}" for i in range(N_CHECKS)]
        targets = [ac.start_target(d, n) for n in names]
        cfg = ac.write_config(
            d / "agent.yaml",
            host.link,
            d / "agent.sock",
            [(f"c{i}", n, 3) for i, n in enumerate(names)],
            heartbeat=1.0,
            rescan=args.rescan,
        )
        machine_rows = ac.machine() + [("load average at start (1/5/15)", ac.load())]
        agent = ac.start_agent(args.python, cfg, d / "agent.log")
        try:
            return measure(args, version, host, agent, machine_rows, d / "agent.log")
        finally:
            ac.stop_agent(agent)
            ac.stop_targets(targets)
            host.close()


def measure(args, version, host, agent, machine_rows, log_path) -> int:
    pid = agent.pid
    counts: dict[str, int] = {}
    last_checks: dict[str, str] = {}

    def drain(until: float) -> None:
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            for m in host.read(left):
                counts[m.TYPE] = counts.get(m.TYPE, 0) + 1
                if m.TYPE == "heartbeat":
                    last_checks.update(dict(m.checks))

    start = time.monotonic()
    drain(start + args.warmup)
    if agent.poll() is not None:
        print(f"the agent exited with {agent.returncode}:\n{log_path.read_text()}")
        return 0
    warm_counts = dict(counts)
    cpu0, ns0, t0 = ac.cpu_seconds(pid), ac.run_ns(pid), time.monotonic()
    rss: list[float] = []
    next_sample = t0
    end = t0 + args.seconds
    while True:
        now = time.monotonic()
        if now >= next_sample:
            rss.append(ac.rss_bytes(pid) / 1e6)
            next_sample += 1.0
            if next_sample > end:
                break
        drain(min(next_sample, end))
    cpu1, ns1, t1 = ac.cpu_seconds(pid), ac.run_ns(pid), time.monotonic()
    window = t1 - t0
    cpu_pct = 100.0 * (cpu1 - cpu0) / window
    sched_pct = 100.0 * (ns1 - ns0) / 1e9 / window
    beats = counts.get("heartbeat", 0) - warm_counts.get("heartbeat", 0)
    ok = sum(1 for s in last_checks.values() if s == "ok")
    other = {k: v for k, v in counts.items() if k not in ("heartbeat", "hello")}

    print(
        "iim-agent resources: 10 watched processes, heartbeat_interval 1s, "
        f"rescan_interval {args.rescan:g}s"
    )
    ac.print_info(
        [("agent python", f"{version} ({args.python})")]
        + machine_rows
        + [
            ("measured window", f"{window:.1f} s after {args.warmup:g} s warm-up"),
            ("rss samples", str(len(rss))),
            ("checks ok in last heartbeat", f"{ok}/{N_CHECKS}"),
            ("load average at end (1/5/15)", ac.load()),
            ("other frames", ", ".join(f"{k} {v}" for k, v in sorted(other.items())) or "none"),
        ]
    )
    print()
    rss_sorted = sorted(rss)
    ac.print_figures(
        [
            ("RSS min (MB)", rss_sorted[0], ".2f", "", None),
            ("RSS median (MB)", statistics.median(rss_sorted), ".2f", "", None),
            (
                "RSS max (MB)",
                rss_sorted[-1],
                ".2f",
                f"< {RSS_TARGET_MB:g}",
                rss_sorted[-1] < RSS_TARGET_MB,
            ),
            (
                "CPU (% of one core)",
                cpu_pct,
                ".3f",
                f"< {CPU_TARGET_PCT:g}",
                cpu_pct < CPU_TARGET_PCT,
            ),
            ("CPU by schedstat (%)", sched_pct, ".3f", "", None),
            ("heartbeats received", beats, "d", "", None),
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
