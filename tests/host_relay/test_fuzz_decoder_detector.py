"""Bounded-time fuzzing of guest bytes through the decoder into the detector.

The default run has a quick hypothesis run (a few seconds: ``IIM_FUZZ_QUICK_SECONDS``).
The long run is behind the ``reliability`` marker::

    pip install -e ".[fuzz]"   # atheris, where a wheel exists
    IIM_FUZZ_SECONDS=600 pytest -m reliability -s tests/host_relay/test_fuzz_decoder_detector.py

It uses atheris (libFuzzer, coverage-guided) when it is installed for this Python
(the ``fuzz`` extra: a wheel exists for CPython 3.11 on x86-64), else hypothesis for
the same time, and prints executions, coverage (atheris: edges and features; with
coverage.py, the line coverage of iim_protocol and the detector by the corpus it
found) and crashes.  Inputs: random bytes, valid frames with mutated bodies behind a good CRC, and
msgpack bombs (4095-deep nesting, 4 G declared lengths, duplicate keys), interleaved
with clock advances, ticks and channel reconnects; every step checks the invariants
of :mod:`tests.host_relay.fuzz_target`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.host_relay import fuzz_target

QUICK_SECONDS = float(os.environ.get("IIM_FUZZ_QUICK_SECONDS", "3"))
LONG_SECONDS = float(os.environ.get("IIM_FUZZ_SECONDS", "60"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@st.composite
def mutated_frames(draw) -> bytes:
    base = draw(st.sampled_from(fuzz_target.FRAMES + fuzz_target.BOMBS))
    body = bytearray(base[5:-4])
    for _ in range(draw(st.integers(0, 4))):
        if body:
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # the body reaches msgpack: a good CRC around it
        return fuzz_target.frame(bytes(body))
    raw = bytearray(base[:5]) + body + base[-4:]  # the CRC no longer fits: resync
    cut = draw(st.integers(0, len(raw)))
    return bytes(raw[:cut]) + draw(st.binary(max_size=16))


chunks = st.one_of(
    st.binary(min_size=1, max_size=2048),
    mutated_frames(),
    st.sampled_from(fuzz_target.BOMBS),
    st.sampled_from(fuzz_target.FRAMES),
    st.lists(st.sampled_from(fuzz_target.FRAMES), min_size=2, max_size=8).map(b"".join),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("feed"), chunks),
        st.tuples(st.just("advance"), st.floats(0, 30, allow_nan=False)),
        st.tuples(st.sampled_from(["connect", "close"]), st.none()),
    ),
    max_size=40,
)


def hypothesis_run(budget: float) -> dict:
    """Hypothesis runs, one after another, until ``budget`` seconds are spent."""
    totals = {"executions": 0, "messages": 0, "bytes": 0, "notifications": 0, "runs": 0}

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(ops)
    def one(case) -> None:
        h = fuzz_target.run_ops(case)
        totals["executions"] += 1
        totals["messages"] += h.messages
        totals["bytes"] += h.fed
        totals["notifications"] += len(h.notified)

    end = time.monotonic() + budget
    started = time.monotonic()
    while time.monotonic() < end:
        one()  # a failing input is shrunk and raised: a crash fails the test
        totals["runs"] += 1
    totals["seconds"] = round(time.monotonic() - started, 1)
    return totals


def test_quick_fuzz_of_decoder_into_detector_finds_no_crash() -> None:
    totals = hypothesis_run(QUICK_SECONDS)
    print(f"fuzz (hypothesis, quick): {totals}, crashes: 0")
    assert totals["executions"] >= 50, totals
    assert totals["messages"] > 0 and totals["notifications"] > 0, totals  # it got deep


def test_known_hostile_inputs_fed_whole_and_byte_by_byte() -> None:
    stream = b"".join(fuzz_target.BOMBS) + b"".join(fuzz_target.FRAMES)
    whole = fuzz_target.run_ops([("feed", stream + b"\xc1")])  # trailing half magic
    single = fuzz_target.run_ops([("feed", stream[i:i + 1]) for i in range(len(stream))])
    assert whole.messages == single.messages == len(fuzz_target.FRAMES)
    assert whole.decoder.stats.as_dict() == {**single.decoder.stats.as_dict(),
                                             "bytes_received": len(stream) + 1}
    assert whole.decoder.stats.frames_rejected >= len(fuzz_target.BOMBS)


@pytest.mark.reliability
@pytest.mark.timeout(LONG_SECONDS + 300)
def test_long_fuzz_of_decoder_into_detector(tmp_path) -> None:
    if importlib.util.find_spec("atheris") is None:
        totals = hypothesis_run(LONG_SECONDS)
        print(f"\nfuzz (hypothesis, atheris not installed): {totals}, crashes: 0, "
              "coverage: not measured")
        assert totals["executions"] > 0
        return
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.host_relay.fuzz_atheris", str(corpus),
         f"-max_total_time={int(LONG_SECONDS)}", "-print_final_stats=1", "-rss_limit_mb=2048",
         "-timeout=10", f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=LONG_SECONDS + 240)
    out = proc.stdout + proc.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir()
                     if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    executions = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    done = re.findall(r"cov: (\d+) ft: (\d+)", out)
    summary = {
        "tool": "atheris",
        "seconds": LONG_SECONDS,
        "executions": int(executions.group(1)) if executions else None,
        "coverage_edges": int(done[-1][0]) if done else None,
        "coverage_features": int(done[-1][1]) if done else None,
        "corpus_inputs": len(list(corpus.iterdir())),
        "crashes": len(crashes),
    }
    summary["line_coverage"] = line_coverage(corpus, tmp_path)
    print(f"\nfuzz: {summary}")
    assert proc.returncode == 0 and not crashes, f"{crashes}\n{out[-6000:]}"
    assert summary["executions"], out[-3000:]


def line_coverage(corpus, tmp_path) -> dict | str:
    """coverage.py's line coverage of the corpus replayed once, by file; or why not."""
    if importlib.util.find_spec("coverage") is None:
        return "not measured (pip install coverage)"
    data = tmp_path / ".coverage"
    env = {**os.environ, "COVERAGE_FILE": str(data)}
    include = "iim_protocol/*,host_relay/detector*.py"
    subprocess.run([sys.executable, "-m", "coverage", "run", f"--include={include}",
                    "-m", "tests.host_relay.fuzz_atheris", "--replay", str(corpus)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    report = subprocess.run([sys.executable, "-m", "coverage", "report", f"--include={include}"],
                            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
                            timeout=120).stdout
    return {line.split()[0]: line.split()[-1] for line in report.splitlines()
            if line.endswith("%")}
