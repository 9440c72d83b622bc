"""bench/agent_probes.py still runs and its figures are sane: tiny parameters, tables parsed.

Not a timing test (bench/ reports, it does not judge): this catches a bench
that measures the wrong thing: a kill or wedge not seen, a wedge "detected"
sooner than the probes could possibly have failed, percentiles out of order.
"""

from __future__ import annotations

import math

import pytest

from tests.guest_agent.test_bench_smoke import LABEL_WIDTH, run_bench

PERIOD, TIMEOUT, FAILURES = 0.3, 0.2, 2


def tables(stdout: str) -> dict[str, dict[str, float]]:
    """{title: {label: value}} of every ``figures: TITLE`` table."""
    out: dict[str, dict[str, float]] = {}
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("figures: "):
            continue
        assert lines[i + 1].split()[:2] == ["figure", "value"], stdout
        rows = out[line.split(": ", 1)[1]] = {}
        for row in lines[i + 2:]:
            if not row.strip():
                break
            rows[row[:LABEL_WIDTH].strip()] = float(row[LABEL_WIDTH:].split()[0])
    return out


def info(stdout: str, label: str) -> str:
    return next(line[LABEL_WIDTH:].strip() for line in stdout.splitlines()
                if line.startswith(label))


@pytest.mark.slow
def test_agent_probes_bench_figures_are_sane():
    stdout = run_bench(
        "agent_probes.py", "--seconds", "3", "--warmup", "2", "--kills", "5", "--wedges", "3",
        "--period", str(PERIOD), "--timeout", str(TIMEOUT), "--failures", str(FAILURES),
        timeout=120.0,
    )
    got = tables(stdout)
    assert set(got) == {"resources", "load", "wedge"}, stdout

    res = got["resources"]
    assert 5 < res["RSS median (MB)"] <= res["RSS max (MB)"] < 200, stdout
    assert 0 <= res["CPU (% of one core)"] < 100, stdout
    assert res["heartbeats received"] >= 3, stdout
    assert info(stdout, "checks ok in last heartbeat") == "20/20", stdout

    load = got["load"]
    assert load["kills (failure frames)"] + load["kill misses"] == 5, stdout
    assert load["kill misses"] == 0, stdout  # every kill seen
    assert 0 < load["kill p50 (ms)"] <= load["kill p99 (ms)"] <= load["kill max (ms)"] < 5000
    assert load["heartbeat gaps measured"] >= 5, stdout
    j50, j99, jmax = (load[f"heartbeat jitter {k} (ms)"] for k in ("p50", "p99", "max"))
    assert 0 <= j50 <= j99 <= jmax < 1000, stdout
    assert info(stdout, "probes seen failed") == "10/10", stdout  # they did time out

    wedge = got["wedge"]
    bound = FAILURES * PERIOD + TIMEOUT
    assert math.isclose(wedge["configured bound (s)"], bound, abs_tol=1e-3)
    assert wedge["wedges (failure frames)"] == 3 and wedge["wedge misses"] == 0, stdout
    # The probe cannot have failed sooner than its `failures` probes could time out.
    assert wedge["wedge min (s)"] >= (FAILURES - 1) * PERIOD + TIMEOUT - 0.01, stdout
    assert wedge["wedge min (s)"] <= wedge["wedge p50 (s)"] <= wedge["wedge max (s)"] < 10
    assert "failure reason x3              timed out after 0.2 s" in stdout
