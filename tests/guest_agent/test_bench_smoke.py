"""The guest agent benchmarks still run: tiny parameters, figures table parsed.

They assert nothing about timing (bench/ reports, it does not judge); this
only keeps them from rotting as the agent changes.
"""

from __future__ import annotations

import math
import subprocess
import sys

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


def test_agent_resources_bench_prints_its_figures():
    stdout = run_bench("agent_resources.py", "--seconds", "3", "--warmup", "1")
    got = figures(stdout)
    for label in ("RSS min (MB)", "RSS median (MB)", "RSS max (MB)", "CPU (% of one core)"):
        assert math.isfinite(got[label]), stdout
    assert 0 < got["RSS min (MB)"] <= got["RSS median (MB)"] <= got["RSS max (MB)"], stdout
    assert got["CPU (% of one core)"] >= 0
    assert got["heartbeats received"] >= 2, stdout
    assert "checks ok in last heartbeat    10/10" in stdout
    assert "agent python" in stdout


def test_agent_kill_latency_bench_prints_its_figures():
    stdout = run_bench("agent_kill_latency.py", "--kills", "5", "--jitter", "0.1")
    got = figures(stdout)
    assert got["n (failure frames)"] + got["misses (no frame in time)"] == 5, stdout
    assert got["n (failure frames)"] >= 1, stdout
    for label in ("p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)"):
        assert math.isfinite(got[label]) and got[label] > 0, stdout
    assert got["p50 (ms)"] <= got["p99 (ms)"] <= got["max (ms)"]
