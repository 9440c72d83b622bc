"""scripts/demo's Python part as a user runs it: step lines, --keep, and cleanup on SIGTERM/SIGHUP.

`kill <demo pid>` must leave nothing behind: no masakari-api, relay, bridge,
agent or demo app, and neither of the demo's temporary directories.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.masakari, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SETUP_TIMEOUT = 120.0  # masakari-api's db sync and start dominate: ~10 s here


class DemoProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "devtools.demo", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []

    def read_until(self, pattern: str, timeout: float = SETUP_TIMEOUT) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("demo exited early:\n" + "".join(self.lines))
            self.lines.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n" + "".join(self.lines))

    def descendants(self) -> list[psutil.Process]:
        """Everything the demo started, masakari-api's own session included."""
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=90)
        return self.proc.returncode, "".join(self.lines) + out

    def kill_leftovers(self) -> None:
        """After a failed test: let the demo clean up (SIGTERM), and only then force it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # exited, or a zombie (the killed demo app until it is reaped)
        return ""


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def using(*paths: Path) -> list[str]:
    """Live processes whose command line or working directory is under one of ``paths``.

    Catches what a demo started but lost track of, which a list of its children
    taken earlier would miss.
    """
    prefixes = tuple(str(p) for p in paths)
    found = []
    for p in psutil.process_iter():
        try:
            where = [p.cwd(), *p.cmdline()]
        except psutil.Error:
            continue
        if alive(p) and any(prefix in arg for arg in where for prefix in prefixes):
            found.append(f"{p.pid} {cmdline(p)}")
    return found


def gone(procs: list[psutil.Process], timeout: float = 10.0) -> list[str]:
    """Those of ``procs`` still alive (not a zombie) after ``timeout``: none expected."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return [f"{p.pid} {cmdline(p)}" for p in left]


@pytest.mark.slow
def test_sigterm_after_keep_stops_everything_and_removes_the_temp_dirs() -> None:
    demo = DemoProcess("--keep")
    try:
        short = Path(demo.read_until(r"<-> (/tmp/iim-[^/ ]+)/ch/").group(1))
        demo.read_until(r"detector armed: \d+\.\d s$")
        workdir = Path(demo.read_until(r"logs and configs in (\S+); try:").group(1))
        relay_cmd = demo.read_until(r"^    (\S+/iim-relay status --config-file \S+)$").group(1)
        agent_cmd = demo.read_until(r"^    (\S+/iim-agent status -c \S+)$").group(1)
        demo.read_until(r"stops it all and removes")
        # Both printed status commands work as printed.
        for cmd in (relay_cmd, agent_cmd):
            result = subprocess.run(cmd.split(), capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, (cmd, result.stderr)
        started = demo.descendants()
        names = {cmdline(p) for p in started}
        for part in ("masakari-api", "iim-relay", "devtools.ptybridge", "iim-agent"):
            assert any(part in n for n in names), (part, names)
        assert workdir.is_dir() and short.is_dir()

        status, out = demo.stop(signal.SIGTERM)
    finally:
        demo.kill_leftovers()
    assert status == 0, out
    assert "==> SIGTERM: stopping everything" in out
    assert "Traceback" not in out
    assert gone(started) == []
    assert using(workdir, short) == []
    assert not workdir.exists() and not short.exists()
    # One line per set-up step, each with its duration.
    steps = [line for line in out.splitlines() if re.search(r": \d+\.\d s$", line)]
    assert len(steps) == 4, out


@pytest.mark.slow
def test_sighup_during_set_up_cleans_up_too() -> None:
    demo = DemoProcess()
    try:
        short = Path(demo.read_until(r"<-> (/tmp/iim-[^/ ]+)/ch/").group(1))
        started = demo.descendants()
        workdir = Path(next(p for p in started if "iim-relay" in cmdline(p)).cwd())
        status, out = demo.stop(signal.SIGHUP)
    finally:
        demo.kill_leftovers()
    assert status == 128 + signal.SIGHUP, out
    assert "==> SIGHUP: stopping everything" in out and "Traceback" not in out
    assert gone(started) == []
    assert using(workdir, short) == []
    assert not workdir.exists() and not short.exists()
