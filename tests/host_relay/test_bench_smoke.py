"""The host relay benchmarks still run: tiny parameters, figures tables parsed.

They assert nothing about timing (bench/ reports, it does not judge); this
only keeps them from rotting as the relay changes.  Each starts a real
masakari-api and relay, so together they take about a minute.
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


def test_kill_to_202_bench_prints_its_figures():
    stdout = run_bench("relay_kill_to_202.py", "--kills", "3", "--pool", "3", "--gap", "0")
    (got,) = tables(stdout)
    assert got["n (202 recorded)"] + got["misses (no 202 in time)"] == 3, stdout
    assert got["n (202 recorded)"] >= 1, stdout
    assert got["found in GET /v1/notifications"] == got["n (202 recorded)"], stdout
    for prefix in ("kill->queued", "kill->202"):
        values = [got[f"{prefix} {p} (ms)"] for p in ("p50", "p90", "p99", "max")]
        assert all(math.isfinite(v) and v > 0 for v in values), stdout
        assert values == sorted(values), stdout
    assert got["kill->queued p50 (ms)"] <= got["kill->202 p50 (ms)"], stdout
    assert "notification_delay_max = 0" in stdout


def test_scale_bench_prints_its_figures_for_both_runs():
    stdout = run_bench("relay_scale.py", "--instances", "20", "--seconds", "3",
                       "--failures", "3", "--baseline-seconds", "2")
    many, one = tables(stdout)
    for got, n in ((many, 20), (one, 1)):
        assert got["instances armed"] == n, stdout
        assert got["still armed after the window"] == n, stdout
        assert got["relay CPU (% of one core)"] >= 0, stdout
        assert 0 < got["relay RSS start (MB)"] <= got["relay RSS max (MB)"], stdout
        assert got["relay open fds"] >= n, stdout
        assert got["failures delivered (202)"] + got["failures missed"] == 3, stdout
        for prefix in ("failure->queued", "failure->202"):
            values = [got[f"{prefix} {p} (ms)"] for p in ("p50", "p90", "p99", "max")]
            assert all(math.isfinite(v) and v >= 0 for v in values), stdout
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
