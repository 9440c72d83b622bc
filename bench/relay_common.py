"""Shared parts of the host relay benchmarks: masakari-api, the relay process, figures.

The benchmarks run the real ``iim-relay`` (``python -m host_relay.cli run``)
as a subprocess against a real masakari-api (devtools/masakari_server.py:
sqlite, noauth2, ``notification_delay_max = 0``), the way devtools/demo.py
does.  They read the relay's status over its control socket (the request
``iim-relay status --json`` sends) and its outbox sqlite file read-only.
Not a test module: pytest never collects bench/.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import figures  # noqa: E402
from figures import cpu_seconds, load, percentile, rss_bytes  # noqa: E402,F401 - re-exported

from devtools.masakari_server import MasakariServer, start_server  # noqa: E402

LABEL_WIDTH = 36
HOSTNAME = "iimbench-compute"  # the compute host registered in Masakari's segment
DELAY_NOTE = (
    "masakari-api runs with notification_delay_max = 0 (its default sleeps a random "
    "0-5 s inside Masakari before recording each notification)"
)


class BenchTimeout(Exception):
    """The whole-run bound (--max-seconds) was reached."""


def bound_run(seconds: float) -> None:
    """Raise BenchTimeout in the main thread after ``seconds`` (finally-blocks still run)."""

    def expire(*_: Any) -> None:
        raise BenchTimeout(f"whole run bound of {seconds:.0f} s reached")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(seconds)))
    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM/SIGHUP (a CI timeout, a closed terminal) clean up like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def env() -> dict:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def stop_process(proc: Optional[subprocess.Popen], timeout: float = 10.0) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


# -- masakari-api ------------------------------------------------------------------


def start_masakari(workdir: Path) -> MasakariServer:
    """A real masakari-api with a failover segment and HOSTNAME registered in it."""
    server = start_server(workdir)
    try:
        server.create_host(HOSTNAME)
    except BaseException:
        server.stop()
        raise
    return server


def masakari_notified(server: MasakariServer) -> dict[str, dict]:
    """instance_uuid -> notification, from GET /v1/notifications (up to 1000 newest)."""
    out: dict[str, dict] = {}
    for n in server.list_notifications():
        out.setdefault(n["payload"].get("instance_uuid"), n)
    return out


# -- the relay ---------------------------------------------------------------------


class RelayProcess:
    """``iim-relay run`` in a directory of its own, with a read-only view of its outbox."""

    def __init__(self, workdir: Path, masakari_url: str, detector: Optional[dict] = None,
                 nofile: Optional[int] = None, profile: Optional[Path] = None,
                 channels: Optional[dict] = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir = self.dir / "channels"
        self.socket_dir.mkdir(exist_ok=True)
        self.state = self.dir / "state"
        self.conf = self.dir / "iim-relay.conf"
        self.log = self.dir / "iim-relay.log"
        self.nofile = nofile
        self.profile = profile
        lines = [
            "[DEFAULT]",
            f"host = {HOSTNAME}",
            f"state_path = {self.state}",
            f"log_file = {self.log}",
            "[channels]",
            f"socket_dir = {self.socket_dir}",
            *(f"{k} = {v}" for k, v in (channels or {}).items()),
            "[detector]",
            *(f"{k} = {v}" for k, v in (detector or {}).items()),
            "[libvirt]",
            "connection_uri =",
            "[masakari]",
            "auth_type = none",
            f"endpoint = {masakari_url}",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: Optional[subprocess.Popen] = None
        self._db: Optional[sqlite3.Connection] = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        argv = [sys.executable]
        if self.profile is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile)]
        argv += ["-m", "host_relay.cli", "run", "--config-file", str(self.conf)]
        nofile = self.nofile

        def limits() -> None:
            if nofile is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        with open(self.dir / "iim-relay.out", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir, env=env(),
                                         preexec_fn=limits)
        wait_for("the relay's control socket", self._answers, 30, 0.1)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"iim-relay exited with {self.proc.returncode}:\n{self.log_tail()}"
                               f"\n--- its stdout/stderr:\n{self.out_tail()}")
        try:
            self.status(timeout=5)
            return True
        except OSError:
            return False

    def status(self, timeout: float = 30.0) -> dict:
        """What ``iim-relay status --json`` prints: one JSON line over the control socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.state / "control.sock"))
            sock.sendall(b'{"cmd": "status"}\n')
            chunks = []
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                chunks.append(data)
        return json.loads(b"".join(chunks))

    def status_cli(self) -> dict:
        """The same through the real CLI (slower: a Python start-up with oslo.config)."""
        out = subprocess.run([sys.executable, "-m", "host_relay.cli", "status", "--json",
                              "--config-file", str(self.conf)], capture_output=True,
                             text=True, timeout=60, env=env(), cwd=self.dir, check=True)
        return json.loads(out.stdout)

    def armed(self, snapshot: dict, check: Optional[str] = None) -> set[str]:
        """Instances whose detector is armed (and whose ``check`` is ok, if given)."""
        out = set()
        for uuid, inst in snapshot.get("instances", {}).items():
            det = inst.get("detector") or {}
            if str(det.get("state", "")).lower() != "armed":
                continue
            if check is not None and (det.get("checks") or {}).get(check) != "ok":
                continue
            out.add(uuid)
        return out

    def outbox(self) -> sqlite3.Connection:
        if self._db is None:
            path = self.state / "outbox.sqlite"
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            self._db.row_factory = sqlite3.Row
        return self._db

    def entry(self, instance_uuid: str) -> Optional[sqlite3.Row]:
        return self.outbox().execute(
            "SELECT * FROM outbox WHERE instance_uuid = ? ORDER BY id DESC LIMIT 1",
            (instance_uuid,),
        ).fetchone()

    def entries(self) -> list[sqlite3.Row]:
        return self.outbox().execute("SELECT * FROM outbox ORDER BY id").fetchall()

    def wait_finished(self, instance_uuid: str, timeout: float,
                      step: float = 0.005) -> Optional[sqlite3.Row]:
        """The outbox row once delivered or dead-lettered, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.entry(instance_uuid)
            if row is not None and row["finished_at"] is not None:
                return row
            time.sleep(step)
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def out_tail(self, lines: int = 15) -> str:
        try:
            text = (self.dir / "iim-relay.out").read_text(errors="replace")
        except OSError:
            return "(none)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        # SIGTERM: the relay shuts down in order (and cProfile writes its file).
        stop_process(self.proc, timeout=30)


# -- /proc readings ----------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limit(pid: int) -> tuple[str, str]:
    """(soft, hard) 'Max open files' of ``pid``."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                return parts[3], parts[4]
    return "?", "?"


# -- figures -----------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    return figures.machine() + [("python", f"{platform.python_version()} ({sys.executable})")]


def print_info(rows: list[tuple[str, str]]) -> None:
    figures.print_info(rows, LABEL_WIDTH)


def print_figures(rows: list[tuple[str, float, str, str, Optional[bool]]],
                  title: str = "") -> None:
    figures.print_figures(rows, LABEL_WIDTH, title)


def latency_rows(prefix: str, values_ms: list[float],
                 targets: Optional[dict[int, float]] = None) -> list[tuple]:
    """p50/p90/p99/max rows; ``targets`` maps a percentile to its upper bound in ms."""
    s = sorted(values_ms)
    rows: list[tuple] = []
    for p in (50, 90, 99):
        value = percentile(s, p)
        bound = (targets or {}).get(p)
        if bound is None:
            rows.append((f"{prefix} p{p} (ms)", value, ".1f", "", None))
        else:
            rows.append((f"{prefix} p{p} (ms)", value, ".1f", f"<= {bound:g}",
                         bool(s) and value <= bound))
    rows.append((f"{prefix} max (ms)", s[-1] if s else float("nan"), ".1f", "", None))
    return rows
