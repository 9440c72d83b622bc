"""The host relay benchmarks still run: tiny parameters, figures tables parsed.

They assert nothing about speed (bench/ reports, it does not judge), but the
figures must be possible ones: every failure reaches Masakari and is found
there, percentiles in order, heartbeats decoded as sent, CPU under one core,
RSS of a Python process.  Each starts a real masakari-api and relay, so
together they take about a minute.  The statistics helpers themselves are
checked on known inputs in tests/bench/test_figures.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.masakari]

REPO = Path(__file__).resolve().parents[2]
LABEL_WIDTH = 36  # bench/relay_common.py LABEL_WIDTH


def run_bench(script: str, *args: str, timeout: float = 110.0) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "run stopped early" not in out.stdout, out.stdout
    return out.stdout


def tables(stdout: str) -> list[dict[str, float]]:
    """Every table under a ``figure value target result`` header, rows as label -> value."""
    found: list[dict[str, float]] = []
    current = None
    for line in stdout.splitlines():
        if line.split()[:2] == ["figure", "value"]:
            current = {}
            found.append(current)
        elif current is not None and line.strip():
            label, rest = line[:LABEL_WIDTH].strip(), line[LABEL_WIDTH:].split()
            current[label] = float(rest[0])
        else:
            current = None
    return found


KILLS = 3


def test_kill_to_202_bench_prints_its_figures():
    stdout = run_bench("relay_kill_to_202.py", "--kills", str(KILLS), "--pool", "3",
                       "--gap", "0")
    (got,) = tables(stdout)
    # Every kill reaches Masakari: a miss is a lost failure.
    assert got["n (202 recorded)"] == KILLS, stdout
    assert got["misses (no 202 in time)"] == 0, stdout
    assert got["found in GET /v1/notifications"] == KILLS, stdout
    for prefix in ("kill->queued", "kill->202"):
        values = [got[f"{prefix} {p} (ms)"] for p in ("p50", "p90", "p99", "max")]
        # More than nothing, and under the bench's 10 s per-kill timeout.
        assert all(math.isfinite(v) and 0 < v < 10_000 for v in values), stdout
        assert values == sorted(values), stdout
    assert got["kill->queued p50 (ms)"] <= got["kill->202 p50 (ms)"], stdout
    assert "notification_delay_max = 0" in stdout


INSTANCES, FAILURES = 20, 3


def test_scale_bench_prints_its_figures_for_both_runs():
    stdout = run_bench("relay_scale.py", "--instances", str(INSTANCES), "--seconds", "3",
                       "--failures", str(FAILURES), "--baseline-seconds", "2")
    many, one = tables(stdout)
    for got, n, seconds in ((many, INSTANCES, 3), (one, 1, 2)):
        assert got["instances armed"] == n, stdout
        assert got["still armed after the window"] == n, stdout
        # Measured on the current protocol's level-triggered path, as real agents send it.
        assert got["sending the whole state (0.2)"] == n, stdout
        assert seconds <= got["window (s)"] < seconds + 1, stdout
        # utime + stime in clock ticks: a few ms of work in the window may read as 0.
        assert 0 <= got["relay CPU (% of one core)"] < 100, stdout
        # A Python process with oslo.config and prometheus_client loaded: tens of MB.
        assert 10 < got["relay RSS start (MB)"] <= got["relay RSS max (MB)"] < 500, stdout
        assert n < got["relay open fds"] < 4 * n + 100, stdout
        # The simulator sends one heartbeat a second per instance; the relay decodes them all.
        assert 0.8 * n <= got["heartbeats sent per s"] <= 1.2 * n, stdout
        assert 0.8 <= got["heartbeats decoded / sent"] <= 1.2, stdout
        assert got["false hang notifications"] == 0, stdout
        # Every failure reaches Masakari and is found there.
        assert got["failures delivered (202)"] == FAILURES, stdout
        assert got["failures missed"] == 0, stdout
        assert got["found in GET /v1/notifications"] == FAILURES, stdout
        for prefix in ("failure->queued", "failure->202"):
            values = [got[f"{prefix} {p} (ms)"] for p in ("p50", "p90", "p99", "max")]
            assert all(math.isfinite(v) and 0 <= v < 10_000 for v in values), stdout
            assert values == sorted(values), stdout
    assert "crash detection: 20 instances vs 1 instance (ms)" in stdout
    assert "notification_delay_max = 0" in stdout


def test_flood_bench_prints_its_figures_for_each_phase():
    stdout = run_bench("relay_flood.py", "--channels", "3", "--kills", "1", "--settle", "0.5",
                       timeout=150.0)
    quiet, random_bytes, bombs = tables(stdout)
    for got in (quiet, random_bytes, bombs):
        assert got["n (202 recorded)"] + got["misses (no 202 in time)"] == 1, stdout
        assert got["relay CPU (% of one core)"] >= 0, stdout
    for got in (random_bytes, bombs):
        assert got["flood MB read by the relay"] > 0, stdout
        assert got["flood channel pauses"] > 0, stdout  # held back, not dropped
    assert bombs["flood frames rejected"] > 0, stdout
    assert "notification_delay_max = 0" in stdout
