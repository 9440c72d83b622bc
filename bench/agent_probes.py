"""The guest agent with application probes: cost, loop latency under hung probes, wedge detection.

Three parts, each against the real agent (``PYTHON -m guest_agent.cli run``)
and a pty this script drains, as bench/agent_resources.py does:

1. resources: 10 http probes at a 1 s period (GET / of a local
   HTTP server) plus 10 process checks (copies of sleep),
   heartbeat 1 s.  After a warm-up: RSS (VmRSS, sampled every second) and CPU
   (utime+stime over the window).  Targets: < 25 MB, < 0.5 % of one core.
2. load: 10 http probes that all time out at once, every period (a
   listener that accepts and never answers; period 1 s, timeout 0.5 s, all
   started together), beside one process check with grace 0.  Measured:
   heartbeat jitter (|inter-arrival - heartbeat_interval| of the heartbeat
   frames read from the pty) and kill -> failure frame latency of the process
   check (SIGKILL at a random phase, as bench/agent_kill_latency.py does).
   Targets: jitter p99 < 50 ms, kill p99 < 20 ms.  ``--load-probes 0`` gives
   the baseline without probes.
3. wedge: one http probe (``--period``, ``--timeout``, ``--failures``) of a
   loopback HTTP server that is SIGSTOPped at a random phase; t0 is
   taken right before the SIGSTOP, t1 when the probe's failure frame is
   decoded.  Target: every wedge seen, max <= failures x period + timeout
   (+ 100 ms for the frame's way out, as the tests allow).
   Then SIGCONT and wait for ``recovered``.

    python bench/agent_probes.py                      # all parts, this Python
    python bench/agent_probes.py --part wedge --wedges 10
    python bench/agent_probes.py --python .venv39/bin/python

It reports and exits 0; it asserts nothing about the figures.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import agent_common as ac
import figures

RSS_TARGET_MB = 25.0
CPU_TARGET_PCT = 0.5
JITTER_P99_TARGET_MS = 50.0
KILL_P99_TARGET_MS = 20.0
SLACK = 0.1  # wedge: the frame's way out and the reader's wake-up, as the tests allow
N_PROBES = 10
N_PROCESSES = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_http() -> None:
    """The probed server (``--serve-http``): 200 for every GET, its port on stdout.

    http.server's own default listen backlog is 5, so 10 probes connecting at
    the same instant would see SYNs dropped; this one has nginx's 511.
    """
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 511

        def handle_error(self, request, client_address) -> None:
            pass  # after a SIGCONT it answers probes that gave up long ago: broken pipes

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def start_http_server(directory: Path) -> tuple[subprocess.Popen, int]:
    """A loopback HTTP server in a child process (``--serve-http``) and its port."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve-http"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=str(directory))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise SystemExit("the HTTP server did not start")
    return proc, int(line)


class BlackHole:
    """Accepts connections and never answers: every http probe of it times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.held: collections.deque[socket.socket] = collections.deque()
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)
            while len(self.held) > 200:  # the agent closed these long ago
                self.held.popleft().close()

    def close(self) -> None:
        self._stop = True
        for conn in self.held:
            conn.close()
        self.sock.close()


def config_text(port_link: Path, sock: Path, heartbeat: float, rescan: float,
                processes: list[tuple[str, str, float]], probes: list[str]) -> str:
    lines = [f"port: {port_link}", f"control_socket: {sock}",
             f"heartbeat_interval: {heartbeat}", f"rescan_interval: {rescan}", "checks:"]
    for name, proc, grace in processes:
        lines += [f"  - name: {name}", f"    process: {proc}", f"    grace: {grace}"]
    lines += probes
    return "\n".join(lines) + "\n"


def http_probe(name: str, url: str, period: float, timeout: float, failures: int) -> str:
    return (f"  - name: {name}\n    http: {url}\n    period: {period}\n    timeout: {timeout}\n"
            f"    failures: {failures}\n    successes: 1")


class Run:
    """One agent with its pty host and children in a temporary directory."""

    def __init__(self, args: argparse.Namespace, d: Path) -> None:
        self.args = args
        self.d = d
        self.host = ac.PtyHost(d / "port")
        self.children: list[subprocess.Popen] = []
        self.agent: subprocess.Popen | None = None

    def start(self, text: str) -> subprocess.Popen:
        cfg = self.d / "agent.yaml"
        cfg.write_text(text)
        self.agent = ac.start_agent(self.args.python, cfg, self.d / "agent.log")
        return self.agent

    def close(self) -> None:
        if self.agent is not None:
            ac.stop_agent(self.agent)
        for p in self.children:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait(5)
        self.host.close()

    def wait_ok(self, name: str, timeout: float) -> bool:
        m, _ = self.host.read_until(
            lambda m: (m.TYPE == "recovered" and m.check == name)
            or (m.TYPE == "heartbeat" and dict(m.checks).get(name) == "ok"),
            timeout,
        )
        return m is not None


# -- part 1 ----------------------------------------------------------------------------------


def part_resources(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="iimbench-") as tmp:
        d = Path(tmp)
        run = Run(args, d)
        try:
            server, port = start_http_server(d)
            run.children.append(server)
            names = [f"iimbench-{i}" for i in range(N_PROCESSES)]
            run.children += [ac.start_target(d, n) for n in names]
            probes = [http_probe(f"web{i}", f"http://127.0.0.1:{port}/", 1.0, 0.5, 3)
                      for i in range(N_PROBES)]
            text = config_text(run.host.link, d / "agent.sock", 1.0, 5.0,
                               [(f"p{i}", n, 3) for i, n in enumerate(names)], probes)
            info = [("load average at start (1/5/15)", ac.load())]
            agent = run.start(text)
            counts: collections.Counter[str] = collections.Counter()
            reasons: collections.Counter[str] = collections.Counter()
            last: dict[str, str] = {}

            def drain(until: float) -> None:
                while time.monotonic() < until:
                    for m in run.host.read(until - time.monotonic()):
                        counts[m.TYPE] += 1
                        if m.TYPE == "heartbeat":
                            last.update(dict(m.checks))
                        elif m.TYPE == "failure":
                            reasons[f"{m.check}: {m.reason}"] += 1

            drain(time.monotonic() + args.warmup)
            if agent.poll() is not None:
                print((d / "agent.log").read_text())
                return
            cpu0, t0 = ac.cpu_seconds(agent.pid), time.monotonic()
            rss = []
            end = t0 + args.seconds
            while time.monotonic() < end:
                rss.append(ac.rss_bytes(agent.pid) / 1e6)
                drain(min(end, time.monotonic() + 1.0))
            cpu1, t1 = ac.cpu_seconds(agent.pid), time.monotonic()
        finally:
            run.close()
    cpu_pct = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    ok = sum(1 for s in last.values() if s == "ok")
    print(f"\n[resources] {N_PROBES} http probes at a 1 s period + {N_PROCESSES} process checks, "
          "heartbeat_interval 1s")
    ac.print_info(info + [
        ("measured window", f"{t1 - t0:.1f} s after {args.warmup:g} s warm-up"),
        ("checks ok in last heartbeat", f"{ok}/{N_PROBES + N_PROCESSES}"),
        ("failure frames", str(counts["failure"])),
        *((f"failure x{n}", r) for r, n in sorted(reasons.items())),
        ("load average at end (1/5/15)", ac.load()),
    ])
    rss.sort()
    figures.print_figures([
        ("RSS median (MB)", statistics.median(rss), ".2f", "", None),
        ("RSS max (MB)", rss[-1], ".2f", f"< {RSS_TARGET_MB:g}", rss[-1] < RSS_TARGET_MB),
        ("CPU (% of one core)", cpu_pct, ".3f", f"< {CPU_TARGET_PCT:g}", cpu_pct < CPU_TARGET_PCT),
        ("heartbeats received", counts["heartbeat"], "d", "", None),
    ], ac.LABEL_WIDTH, title="figures: resources")


# -- part 2 ----------------------------------------------------------------------------------


def part_load(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    hb = args.load_heartbeat
    with tempfile.TemporaryDirectory(prefix="iimbench-") as tmp:
        d = Path(tmp)
        run = Run(args, d)
        hole = BlackHole()
        try:
            target = ac.start_target(d, "iimbench-kill")
            run.children.append(target)
            probes = [http_probe(f"hung{i}", f"http://127.0.0.1:{hole.port}/", 1.0, 0.5, 3)
                      for i in range(args.load_probes)]
            text = config_text(run.host.link, d / "agent.sock", hb, 0.5,
                               [("kill", "iimbench-kill", 0)], probes)
            info = [("load average at start (1/5/15)", ac.load())]
            run.start(text)
            arrivals: list[float] = []
            probe_failures: set[str] = set()

            def note(m) -> None:
                if m.TYPE == "heartbeat":
                    arrivals.append(time.monotonic())
                elif m.TYPE == "failure" and m.check != "kill":
                    probe_failures.add(m.check)

            def read_until(pred, timeout: float):
                deadline = time.monotonic() + timeout
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    for m in run.host.read(min(left, 0.2)):
                        note(m)
                        if pred(m):
                            return m

            read_until(lambda m: m.TYPE == "heartbeat" and dict(m.checks).get("kill") == "ok",
                       15)
            arrivals.clear()
            latencies, misses = [], 0
            stop_at = time.monotonic() + args.max_seconds
            for _ in range(args.kills):
                if time.monotonic() > stop_at:
                    break
                pause_until = time.monotonic() + rng.uniform(0.0, 1.0)
                read_until(lambda m: False, max(0.0, pause_until - time.monotonic()))
                t0 = time.monotonic()
                os.kill(target.pid, signal.SIGKILL)
                m = read_until(lambda m: m.TYPE == "failure" and m.check == "kill", 5.0)
                t1 = time.monotonic()
                target.wait(5)
                if m is None:
                    misses += 1
                else:
                    latencies.append((t1 - t0) * 1000)
                target = ac.start_target(d, "iimbench-kill")
                run.children.append(target)
                if read_until(lambda m: (m.TYPE == "recovered" and m.check == "kill")
                              or (m.TYPE == "heartbeat" and dict(m.checks).get("kill") == "ok"),
                              5.0) is None:
                    break
            read_until(lambda m: False, 2.0)
        finally:
            run.close()
            hole.close()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    jitter = sorted(abs(g - hb) * 1000 for g in gaps)
    lat = sorted(latencies)
    print(f"\n[load] {args.load_probes} http probes timing out together every 1 s "
          f"(timeout 0.5 s); heartbeat_interval {hb:g}s; SIGKILL of a watched process "
          "(grace 0) at random phases")
    ac.print_info(info + [
        ("probes seen failed", f"{len(probe_failures)}/{args.load_probes}"),
        ("kills done", str(len(lat) + misses)),
        ("load average at end (1/5/15)", ac.load()),
    ])
    p99j, p99k = figures.percentile(jitter, 99), figures.percentile(lat, 99)
    figures.print_figures([
        ("heartbeat gaps measured", len(jitter), "d", "", None),
        ("heartbeat jitter p50 (ms)", figures.percentile(jitter, 50), ".2f", "", None),
        ("heartbeat jitter p99 (ms)", p99j, ".2f", f"< {JITTER_P99_TARGET_MS:g}",
         bool(jitter) and p99j < JITTER_P99_TARGET_MS),
        ("heartbeat jitter max (ms)", jitter[-1] if jitter else float("nan"), ".2f", "", None),
        ("kills (failure frames)", len(lat), "d", "", None),
        ("kill misses", misses, "d", "0", misses == 0),
        ("kill p50 (ms)", figures.percentile(lat, 50), ".2f", "", None),
        ("kill p99 (ms)", p99k, ".2f", f"< {KILL_P99_TARGET_MS:g}",
         bool(lat) and p99k < KILL_P99_TARGET_MS),
        ("kill max (ms)", lat[-1] if lat else float("nan"), ".2f", "", None),
    ], ac.LABEL_WIDTH, title="figures: load")


# -- part 3 ----------------------------------------------------------------------------------


def part_wedge(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    bound = args.failures * args.period + args.timeout
    with tempfile.TemporaryDirectory(prefix="iimbench-") as tmp:
        d = Path(tmp)
        run = Run(args, d)
        try:
            server, port = start_http_server(d)
            run.children.append(server)
            probe = http_probe("wedge", f"http://127.0.0.1:{port}/", args.period, args.timeout,
                               args.failures)
            text = config_text(run.host.link, d / "agent.sock", 1.0, 5.0, [], [probe])
            info = [("load average at start (1/5/15)", ac.load())]
            run.start(text)
            latencies, misses, reasons = [], 0, collections.Counter()
            ok = run.wait_ok("wedge", 15)
            stop_at = time.monotonic() + args.max_seconds
            for _ in range(args.wedges if ok else 0):
                if time.monotonic() > stop_at:
                    break
                pause_until = time.monotonic() + rng.uniform(0.0, args.period)
                while time.monotonic() < pause_until:
                    run.host.read(pause_until - time.monotonic())
                t0 = time.monotonic()
                server.send_signal(signal.SIGSTOP)
                m, _ = run.host.read_until(
                    lambda m: m.TYPE == "failure" and m.check == "wedge", bound + 5.0)
                t1 = time.monotonic()
                server.send_signal(signal.SIGCONT)
                if m is None:
                    misses += 1
                else:
                    latencies.append(t1 - t0)
                    reasons[m.reason.split(" (")[0]] += 1
                if not run.wait_ok("wedge", 10 * args.period + 5):
                    break
        finally:
            run.close()
    lat = sorted(latencies)
    print(f"\n[wedge] SIGSTOP of a probed HTTP server at a random phase -> failure frame "
          f"(period {args.period:g}s, timeout {args.timeout:g}s, failures {args.failures})")
    ac.print_info(info + [
        ("wedges done", str(len(lat) + misses)),
        *((f"failure reason x{n}", r) for r, n in sorted(reasons.items())),
        ("load average at end (1/5/15)", ac.load()),
    ])
    figures.print_figures([
        ("wedges (failure frames)", len(lat), "d", "", None),
        ("wedge misses", misses, "d", "0", misses == 0),
        ("configured bound (s)", bound, ".3f", "", None),
        ("wedge p50 (s)", figures.percentile(lat, 50), ".3f", "", None),
        ("wedge min (s)", lat[0] if lat else float("nan"), ".3f", "", None),
        ("wedge max (s)", lat[-1] if lat else float("nan"), ".3f", f"<= {bound + SLACK:g}",
         bool(lat) and lat[-1] <= bound + SLACK),
    ], ac.LABEL_WIDTH, title="figures: wedge")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("all", "resources", "load", "wedge"), default="all")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the agent")
    ap.add_argument("--seconds", type=float, default=60.0, help="resources: window (default 60)")
    ap.add_argument("--warmup", type=float, default=5.0, help="resources: warm-up (default 5)")
    ap.add_argument("--kills", type=int, default=200, help="load: kills (default 200)")
    ap.add_argument("--load-probes", type=int, default=N_PROBES, help="load: hung probes")
    ap.add_argument("--load-heartbeat", type=float, default=0.2,
                    help="load: heartbeat_interval (default 0.2 s, for more samples)")
    ap.add_argument("--wedges", type=int, default=30, help="wedge: rounds (default 30)")
    ap.add_argument("--period", type=float, default=1.0, help="wedge: period (default 1)")
    ap.add_argument("--timeout", type=float, default=0.5, help="wedge: timeout (default 0.5)")
    ap.add_argument("--failures", type=int, default=3, help="wedge: failures (default 3)")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="bound per part")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--serve-http", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_http:
        serve_http()
        return 0
    version = ac.python_version(args.python)
    print("iim-agent with application probes")
    ac.print_info([("agent python", f"{version} ({args.python})"), *ac.machine()])
    parts = ("resources", "load", "wedge") if args.part == "all" else (args.part,)
    for part in parts:
        {"resources": part_resources, "load": part_load, "wedge": part_wedge}[part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
