"""What every benchmark here prints and reads: /proc figures, percentiles, tables.

Shared by the guest agent benchmarks (which also run under Python 3.9) and
the relay benchmarks.  Not a test module: pytest never collects bench/.
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (/proc/PID/stat, clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(rank) - 1]


def machine() -> list[tuple[str, str]]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        ("cpus (nproc)", str(os.cpu_count())),
        ("cpu model", model),
        ("kernel", platform.release()),
    ]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_info(rows: list[tuple[str, str]], width: int) -> None:
    for label, value in rows:
        print(f"{label:<{width}} {value}", flush=True)


def print_figures(rows: list[tuple[str, float, str, str, Optional[bool]]], width: int,
                  title: str = "") -> None:
    """Rows of (label, value, format, target text, met or None).  The value is always a number."""
    if title:
        print(f"\n{title}")
    print(f"{'figure':<{width}} {'value':>10}  {'target':<12} result")
    for label, value, fmt, target, met in rows:
        verdict = "" if met is None else ("PASS" if met else "MISS")
        print(f"{label:<{width}} {format(value, fmt):>10}  {target:<12} {verdict}".rstrip())
    print(flush=True)
