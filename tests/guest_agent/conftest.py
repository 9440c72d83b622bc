"""Real parts for the agent's tests: ptys as ports, child processes, the agent itself."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path
from typing import Callable, Optional

import pytest

from iim_protocol.codec import Decoder
from iim_protocol.messages import Message

REPO = Path(__file__).resolve().parents[2]
SLEEP = shutil.which("sleep") or "/bin/sleep"


def agent_env() -> dict:
    env = dict(os.environ)
    # The repo first: an editable install made before guest_agent/__init__.py
    # existed would import it as a namespace package.
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class PtyHost:
    """Plays the host: a pty whose slave the agent opens through a symlink we control."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: Optional[int] = None
        self.slave: Optional[int] = None
        self.decoder = Decoder()
        self.seen: list[Message] = []

    def open(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line discipline before the agent sets it
        os.set_blocking(self.master, False)
        tmp = self.link.with_suffix(".new")
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(os.ttyname(self.slave), tmp)
        os.replace(tmp, self.link)
        self.decoder = Decoder()

    def close(self) -> None:
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None
        if self.link.is_symlink():
            self.link.unlink()

    def write(self, data: bytes, timeout: float = 5.0) -> None:
        """Write all of ``data`` (the master is non-blocking: wait for room)."""
        assert self.master is not None
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not write {len(view)} bytes to the pty")
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                n = 0
            view = view[n:]
            if view:
                select.select([], [self.master], [], 0.05)

    def read_until(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 5.0
    ) -> list[Message]:
        """Messages read since this call started, once ``predicate`` holds; fail at ``timeout``."""
        assert self.master is not None
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while not predicate(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s; got {[m.TYPE for m in got]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                continue
            msgs = self.decoder.feed(data)
            got.extend(msgs)
            self.seen.extend(msgs)
        return got

    def wait_for(self, type_: str, timeout: float = 5.0, **fields) -> Message:
        def match(m: Message) -> bool:
            return m.TYPE == type_ and all(getattr(m, k) == v for k, v in fields.items())

        got = self.read_until(lambda ms: any(match(m) for m in ms), timeout)
        return next(m for m in got if match(m))


class AgentProcess:
    """``python -m guest_agent.cli run`` in a subprocess, stderr kept in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> AgentProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guest_agent.cli", "run", "-c", str(self.config), "--debug"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=agent_env(),
            cwd=str(self.config.parent),
        )
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 5.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


class Targets:
    """Child processes with a distinctive name: a copy of sleep called ``name``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str) -> subprocess.Popen:
        exe = self.directory / name
        if not exe.exists():
            shutil.copy(SLEEP, exe)
        proc = subprocess.Popen([str(exe), "1000"])
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def write_config(path: Path, port: Path, socket: Path, checks: str = "", extra: str = "") -> Path:
    text = (
        f"port: {port}\n"
        f"control_socket: {socket}\n"
        "heartbeat_interval: 0.2\n"
        "rescan_interval: 0.5\n"
        f"{extra}"
    )
    text += f"checks:\n{checks}" if checks else "checks: []\n"
    path.write_text(text)
    return path


@pytest.fixture
def targets(tmp_path):
    t = Targets(tmp_path)
    yield t
    t.stop_all()


@pytest.fixture
def host(tmp_path):
    h = PtyHost(tmp_path / "port")
    yield h
    h.close()


@pytest.fixture
def agent_factory(tmp_path):
    started: list[AgentProcess] = []

    def make(config: Path) -> AgentProcess:
        a = AgentProcess(config, tmp_path / f"agent{len(started)}.log").start()
        started.append(a)
        return a

    yield make
    for a in started:
        a.stop()


@pytest.fixture
def sock_path(tmp_path):
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be long.
    path = Path(f"/tmp/iimt-{os.getpid()}-{time.monotonic_ns()}.sock")
    yield path
    if path.exists():
        path.unlink()
