"""bench/figures.py, the helpers every benchmark's figures come from, on known inputs.

Percentiles against worked nearest-rank examples; the /proc parsers against
fixed texts (a command name with spaces and parentheses included); and the
readers against a real child process that has used a known amount of CPU
and memory, measured by the child itself.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # as when a benchmark runs: bench/ is its script directory

import agent_common  # noqa: E402
import figures  # noqa: E402

MIB = 1024 * 1024
TICK = 1 / figures.CLK_TCK


@pytest.mark.parametrize(("values", "p", "expected"), [
    # The nearest-rank method's worked example: 15, 20, 35, 40, 50.
    ([15, 20, 35, 40, 50], 5, 15),
    ([15, 20, 35, 40, 50], 30, 20),
    ([15, 20, 35, 40, 50], 40, 20),
    ([15, 20, 35, 40, 50], 50, 35),
    ([15, 20, 35, 40, 50], 100, 50),
    (list(range(1, 11)), 50, 5),
    (list(range(1, 11)), 90, 9),
    (list(range(1, 11)), 99, 10),
    (list(range(1, 11)), 0, 1),
    (list(range(1, 101)), 50, 50),
    (list(range(1, 101)), 90, 90),
    (list(range(1, 101)), 99, 99),
    ([x / 10 for x in range(1, 1001)], 99.9, 99.9),
    ([7.5], 50, 7.5),
    ([7.5], 99, 7.5),
])
def test_percentile_is_the_nearest_rank(values, p, expected) -> None:
    assert figures.percentile(values, p) == expected


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(figures.percentile([], 50))


def test_percentiles_of_five_kills_as_the_smoke_tests_see_them() -> None:
    lat = [3.0, 4.0, 5.0, 6.0, 100.0]
    assert [figures.percentile(lat, p) for p in (50, 90, 99)] == [5.0, 100.0, 100.0]


STATUS = textwrap.dedent("""\
    Name:\tpython3
    Umask:\t0022
    State:\tS (sleeping)
    VmPeak:\t   30000 kB
    VmSize:\t   29000 kB
    VmHWM:\t   12000 kB
    VmRSS:\t   11712 kB
    RssAnon:\t    5000 kB
    Threads:\t1
    """)


def test_vmrss_is_read_from_its_own_line_in_kib() -> None:
    assert figures.vmrss_bytes(STATUS) == 11712 * 1024  # not VmHWM, not RssAnon


def test_a_status_without_vmrss_is_an_error() -> None:
    kernel_thread = "Name:\tkthreadd\nState:\tS (sleeping)\nThreads:\t1\n"
    with pytest.raises(ValueError, match="no VmRSS line"):
        figures.vmrss_bytes(kernel_thread)


def test_utime_and_stime_are_fields_14_and_15_counted_past_the_name() -> None:
    # Fields 1-2, then from field 3 (state): 14 is utime (57), 15 stime (23),
    # 16/17 the children's (1000/2000), which must not be counted.
    rest = "S 1 4321 4321 0 -1 4194560 900 0 3 0 57 23 1000 2000 20 0 3 0 12345 100 200"
    for name in ("python3", "a b", "x) S 1 2 (y", "))"):
        assert figures.stat_cpu_ticks(f"4321 ({name}) {rest}\n") == 80, name


CHILD = """\
import os, sys, time
n = int(sys.argv[1])
data = b""
print("ready", flush=True)
sys.stdin.readline()
data = os.urandom(1) * n  # written, so resident
deadline = time.process_time() + 0.3
while time.process_time() < deadline:
    pass
print(time.process_time(), flush=True)
sys.stdin.readline()
"""


def test_readers_agree_with_what_a_real_process_used() -> None:
    """64 MiB written and ~0.3 s of CPU burnt by a child, as /proc and the child see them."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(64 * MIB)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        rss_before = figures.rss_bytes(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        used = float(child.stdout.readline())  # the child's own CPU clock, in ns resolution
        rss_after = figures.rss_bytes(child.pid)
        cpu = figures.cpu_seconds(child.pid)
        on_cpu = agent_common.run_ns(child.pid) / 1e9
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert 5 * MIB < rss_before < 200 * MIB
    assert 60 * MIB <= rss_after - rss_before <= 72 * MIB, (rss_before, rss_after)
    assert used >= 0.3
    # utime + stime count whole clock ticks; the child idles after printing.
    assert abs(cpu - used) <= 2 * TICK + 0.005, (cpu, used)
    assert abs(on_cpu - used) <= 0.005, (on_cpu, used)


def test_readers_fail_for_a_process_that_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    with pytest.raises(FileNotFoundError):
        figures.rss_bytes(child.pid)
    with pytest.raises(FileNotFoundError):
        figures.cpu_seconds(child.pid)


def test_this_process_reads_as_a_python_process() -> None:
    assert 5 * MIB < figures.rss_bytes(os.getpid()) < 2048 * MIB
    assert figures.cpu_seconds(os.getpid()) > 0
