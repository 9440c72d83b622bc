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


def vmrss_bytes(status: str) -> int:
    """The VmRSS line of a /proc/PID/status text, in bytes (the kernel writes kB = KiB)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"VmRSS in {unit!r}, not kB")
            return int(value) * 1024
    raise ValueError("no VmRSS line (a kernel thread, or a process that has exited)")


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime of a /proc/PID/stat line, in clock ticks.

    The command name (field 2) is in parentheses and may itself hold spaces
    and parentheses, so the fields are counted from the last ``)``.
    """
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        try:
            return vmrss_bytes(f.read())
        except ValueError as exc:
            raise RuntimeError(f"pid {pid}: {exc}") from None


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (/proc/PID/stat, clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        return stat_cpu_ticks(f.read()) / CLK_TCK


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
