"""Shared parts of the guest agent benchmarks: a pty host, the agent process, figures.

The benchmarks run the real ``iim-agent`` (``python -m guest_agent.cli run``)
as a subprocess against a pty whose slave is reached through a symlink, the
way tests/guest_agent/conftest.py does, and decode frames from the pty master
with :class:`iim_protocol.codec.Decoder`.  Not a test module: pytest never
collects bench/.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
import tty
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import figures  # noqa: E402
from figures import cpu_seconds, load, percentile, rss_bytes  # noqa: E402,F401 - re-exported

from iim_protocol.codec import Decoder  # noqa: E402
from iim_protocol.messages import Message  # noqa: E402

SLEEP = shutil.which("sleep") or "/bin/sleep"
LABEL_WIDTH = 30


def agent_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def python_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


class PtyHost:
    """Plays the host: a pty whose slave the agent opens through ``link``."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        os.symlink(os.ttyname(self.slave), link)
        self.decoder = Decoder()
        self.bytes_read = 0

    def read(self, timeout: float) -> list[Message]:
        """Messages decoded from what arrives within ``timeout`` (first chunk only)."""
        ready, _, _ = select.select([self.master], [], [], max(0.0, timeout))
        if not ready:
            return []
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, OSError):
            return []
        self.bytes_read += len(data)
        return self.decoder.feed(data)

    def read_until(
        self, predicate: Callable[[Message], bool], timeout: float
    ) -> tuple[Optional[Message], list[Message]]:
        """(the first message matching ``predicate`` or None at timeout, all messages read)."""
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, got
            for m in self.read(min(left, 0.2)):
                got.append(m)
                if predicate(m):
                    return m, got

    def close(self) -> None:
        for fd in (self.master, self.slave):
            os.close(fd)
        if self.link.is_symlink():
            self.link.unlink()


def write_config(
    path: Path,
    port: Path,
    socket: Path,
    checks: list[tuple[str, str, float]],
    heartbeat: float,
    rescan: float,
) -> Path:
    """An agent config: ``checks`` are (name, process name, grace seconds)."""
    lines = [
        f"port: {port}",
        f"control_socket: {socket}",
        f"heartbeat_interval: {heartbeat}",
        f"rescan_interval: {rescan}",
        "checks:",
    ]
    for name, proc, grace in checks:
        lines += [f"  - name: {name}", f"    process: {proc}", f"    grace: {grace}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_agent(python: str, config: Path, log: Path) -> subprocess.Popen:
    """``PYTHON -m guest_agent.cli run -c CONFIG`` at INFO level, as systemd would run it."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [python, "-m", "guest_agent.cli", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=agent_env(),
            cwd=str(config.parent),
        )


def stop_agent(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_target(directory: Path, name: str) -> subprocess.Popen:
    """A child process whose name (``ps -o comm``) is ``name``: a copy of sleep."""
    exe = directory / name
    if not exe.exists():
        shutil.copy(SLEEP, exe)
    return subprocess.Popen([str(exe), "100000"])


def stop_targets(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(5)


# -- /proc readings --------------------------------------------------------------


def run_ns(pid: int) -> int:
    """Time on a CPU of all of ``pid``'s threads, in ns (/proc/PID/task/*/schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


# -- figures -------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    procs = sum(1 for d in os.listdir("/proc") if d.isdigit())
    return figures.machine() + [("processes on the machine", str(procs))]


def print_info(rows: list[tuple[str, str]]) -> None:
    figures.print_info(rows, LABEL_WIDTH)


def print_figures(rows: list[tuple[str, float, str, str, Optional[bool]]]) -> None:
    figures.print_figures(rows, LABEL_WIDTH)
