"""The guest agent benchmarks still run: tiny parameters, figures table parsed.

They assert nothing about speed (bench/ reports, it does not judge), but the
figures must be possible ones: every kill seen, percentiles in order, CPU
inside (0, 100) % of a core and equal by both of its measures, RSS of a
Python process.  The statistics helpers themselves are checked on known
inputs in tests/bench/test_figures.py.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from tests.guest_agent.conftest import REPO, agent_env

LABEL_WIDTH = 30  # bench/agent_common.py LABEL_WIDTH


def run_bench(script: str, *args: str, timeout: float = 30.0) -> str:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=timeout,
        cwd=str(REPO),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def figures(stdout: str) -> dict[str, float]:
    """The rows of the table under the ``figure value target result`` header."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["figure", "value"])
    out = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        label, rest = line[:LABEL_WIDTH].strip(), line[LABEL_WIDTH:].split()
        out[label] = float(rest[0])
    return out


def info(stdout: str, label: str) -> str:
    """The value of an ``label   value`` line printed before the figures table."""
    for line in stdout.splitlines():
        if line[:LABEL_WIDTH].strip() == label:
            return line[LABEL_WIDTH:].strip()
    raise AssertionError(f"no {label!r} line in:\n{stdout}")


SECONDS = 3


@pytest.mark.slow
def test_agent_resources_bench_prints_its_figures():
    stdout = run_bench("agent_resources.py", "--seconds", str(SECONDS), "--warmup", "1")
    got = figures(stdout)
    for label in ("RSS min (MB)", "RSS median (MB)", "RSS max (MB)", "CPU (% of one core)"):
        assert math.isfinite(got[label]), stdout
    # A Python process with psutil and msgpack loaded: tens of MB, never 5 or 150.
    assert 5 < got["RSS min (MB)"] <= got["RSS median (MB)"] <= got["RSS max (MB)"] < 150, stdout
    window = float(re.match(r"([\d.]+) s after", info(stdout, "measured window")).group(1))
    assert SECONDS <= window < SECONDS + 1, stdout
    assert int(info(stdout, "rss samples")) == SECONDS + 1, stdout  # at 0, 1, ... SECONDS s
    # The agent works (rescans, heartbeats) but idles nearly all the time.  schedstat counts
    # nanoseconds; utime + stime whole clock ticks, so the two agree to within two ticks.
    sched, cpu = got["CPU by schedstat (%)"], got["CPU (% of one core)"]
    assert 0 < sched < 100, stdout
    assert 0 <= cpu < 100, stdout
    tick_pct = 100 / os.sysconf("SC_CLK_TCK") / window
    assert abs(cpu - sched) <= 2 * tick_pct + 0.01, stdout
    # heartbeat_interval 1 s over the window: one a second, give or take the edges.
    assert SECONDS - 1 <= got["heartbeats received"] <= SECONDS + 1, stdout
    assert "checks ok in last heartbeat    10/10" in stdout
    assert "agent python" in stdout


KILLS = 5


@pytest.mark.slow
def test_agent_kill_latency_bench_prints_its_figures():
    stdout = run_bench("agent_kill_latency.py", "--kills", str(KILLS), "--jitter", "0.1")
    got = figures(stdout)
    # Every kill is seen: a miss is a failure the agent did not report.
    assert got["n (failure frames)"] == KILLS, stdout
    assert got["misses (no frame in time)"] == 0, stdout
    assert info(stdout, "kills asked / done") == f"{KILLS} / {KILLS}", stdout
    assert info(stdout, "recoveries not seen") == "0", stdout
    for label in ("p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)"):
        # More than nothing, and under the bench's 5 s per-kill timeout.
        assert math.isfinite(got[label]) and 0 < got[label] < 5000, stdout
    assert got["p50 (ms)"] <= got["p90 (ms)"] <= got["p99 (ms)"] <= got["max (ms)"], stdout
    # Nearest rank of 5 values: p90 and p99 are the largest (tests/bench/test_figures.py).
    assert got["p90 (ms)"] == got["p99 (ms)"] == got["max (ms)"], stdout
