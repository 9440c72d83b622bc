"""The whole iim pipeline on one machine, on embedded defaults.

What runs (all on 127.0.0.1 and UNIX sockets in a temporary directory):

1. a real masakari-api from PyPI (sqlite, noauth2, ``notification_delay_max
   = 0``), with a failover segment and this host registered in it;
2. ``iim-relay``, watching a channel directory;
3. a pty <-> UNIX socket bridge standing in for QEMU's virtio-serial chardev
   of one instance (``devtools.ptybridge``);
4. ``iim-agent``, watching a demo process and probing a small HTTP server
   (``http`` check) through that pty.

Then it kills the demo process (or, with ``--meltdown``, SIGSTOPs the HTTP
server: the process stays, nothing answers) and prints the notification as
Masakari recorded it, with the time from the fault to the record.  Each set-up
step is one line with how long it took.  ``--keep`` leaves everything running
until Ctrl-C, SIGTERM or SIGHUP.  However it ends (Ctrl-C, SIGTERM, SIGHUP, an
error), every process it started is stopped and its temporary directories are
removed; only a failure keeps the directory with the logs, and says where.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

from devtools.masakari_server import MasakariServer, start_server

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
WAIT_READY = 60.0  # the agent arms the relay within a few seconds here
WAIT_RECORD = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


@contextlib.contextmanager
def step(text: str) -> Iterator[list]:
    """One line for a set-up step, printed when it is done, with how long it took.

    The body may append details to the yielded list (known only once done).
    """
    started = time.monotonic()
    details: list = []
    yield details
    extra = f" ({'; '.join(details)})" if details else ""
    say(f"{text}{extra}: {time.monotonic() - started:.1f} s")


class Stopped(BaseException):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP: stop and clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_held: dict = {"on": False, "pending": None}


def _raise_stopped(signum: int, _frame: object) -> None:
    if _held["on"]:
        _held["pending"] = _held["pending"] or signum
        return
    raise Stopped(signum)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Delay a stop signal until the block is done (it raises Stopped then)."""
    _held["on"] = True
    try:
        yield
    finally:
        _held["on"] = False
        pending, _held["pending"] = _held["pending"], None
    if pending:
        raise Stopped(pending)


def wait_for(what: str, predicate: Callable[[], object], timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    def __init__(self, workdir: Path, meltdown: bool = False) -> None:
        self.dir = workdir
        self.meltdown = meltdown  # fault: SIGSTOP the probed web server instead of a kill
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.server: Optional[MasakariServer] = None
        self.instance = str(uuid.uuid4())
        self.host = socket.gethostname() or "iim-demo-host"
        self.relay_conf = self.dir / "iim-relay.conf"
        # UNIX socket paths are limited to 107 bytes: sockets live in a short directory.
        self.short = Path(tempfile.mkdtemp(prefix="iim-", dir="/tmp"))
        self.channels = self.short / "ch"
        self.agent_conf = self.dir / "agent.yaml"
        # The agent matches the process by name on the whole machine: a name of this demo's
        # own (at most 15 characters, the kernel's comm) so that two demos never mix.
        self.app_name = f"iim-app-{self.instance[:6]}"

    def spawn(self, name: str, argv: list, log: str) -> subprocess.Popen:
        out = open(self.dir / log, "ab")  # noqa: SIM115 - the child keeps it
        env = dict(os.environ, PYTHONPATH=str(ROOT))  # for python -m devtools.ptybridge
        # A stop signal between the fork and the append would leave the child unknown
        # to cleanup(): hold it until the child is on the list.
        with _signals_held():
            try:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=self.dir, env=env)
                self.procs.append((name, proc))
            finally:
                out.close()
        return proc

    def start_masakari(self) -> None:
        with step("masakari-api, real, on 127.0.0.1 with sqlite and noauth2") as details:
            self.server = start_server(self.dir / "masakari")
            self.server.create_host(self.host)
            details.append(f"{self.server.url}; segment {self.server.segment_uuid}, "
                           f"host {self.host!r} registered")

    def start_relay(self) -> None:
        self.channels.mkdir()
        self.relay_conf.write_text(
            "[DEFAULT]\n"
            f"host = {self.host}\n"
            f"state_path = {self.short / 'state'}\n"
            f"log_file = {self.dir / 'iim-relay.log'}\n"
            "[channels]\n"
            f"socket_dir = {self.channels}\n"
            "[detector]\n"
            "min_uptime = 2\n"
            "[libvirt]\n"
            "connection_uri =\n"  # the demo has no libvirt: channels come from socket_dir
            "[masakari]\n"
            "auth_type = none\n"
            f"endpoint = {self.server.url}\n"
        )
        with step("iim-relay started"):
            self.spawn("iim-relay", [str(BIN / "iim-relay"), "run", "--config-file",
                                     str(self.relay_conf)], "iim-relay.out")

    def start_guest(self) -> subprocess.Popen:
        sock = self.channels / f"{self.instance}.sock"
        port = self.dir / "org.openstack.iim.0"
        with step(f"instance {self.instance}: pty bridge {port} <-> {sock} (stands in for "
                  "QEMU), the relay connected"):
            self.spawn("ptybridge", [sys.executable, "-m", "devtools.ptybridge", "--socket",
                                     str(sock), "--link", str(port)], "ptybridge.log")
            wait_for("the bridge's socket", sock.exists, 10)
            # Like QEMU with the relay attached: start the guest once the host end is connected.
            wait_for("the relay to connect to the channel",
                     lambda: "host connected" in (self.dir / "ptybridge.log").read_text(), 30)
        app = self.dir / self.app_name
        shutil.copy(shutil.which("sleep") or "/bin/sleep", app)
        victim = self.spawn("demo app", [str(app), "100000"], "demo-app.log")
        web_port = free_port()
        self.web = self.spawn("demo web", [sys.executable, "-m", "http.server", "--bind",
                                           "127.0.0.1", "--directory", str(self.dir),
                                           str(web_port)], "demo-web.log")
        self.agent_conf.write_text(
            f"port: {port}\n"
            "heartbeat_interval: 1s\n"
            f"control_socket: {self.short / 'agent.sock'}\n"
            "checks:\n"
            "  - name: demo-app\n"
            f"    process: {self.app_name}\n"
            "    grace: 0\n"
            "  - name: demo-web\n"
            f"    http: http://127.0.0.1:{web_port}/\n"
            "    period: 1s\n"
            "    timeout: 500ms\n"
            "    failures: 2\n"
        )
        self.spawn("iim-agent", [str(BIN / "iim-agent"), "run", "-c", str(self.agent_conf)],
                   "iim-agent.log")
        return victim

    def relay_status(self) -> dict:
        with _signals_held():  # a short command: let it finish rather than orphan it
            out = subprocess.run([str(BIN / "iim-relay"), "status", "--json", "--config-file",
                                  str(self.relay_conf)], capture_output=True, text=True,
                                 timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}

    def instance_state(self) -> str:
        inst = self.relay_status().get("instances", {}).get(self.instance) or {}
        return str((inst.get("detector") or {}).get("state", "")).lower()

    def show(self, title: str, argv: list) -> None:
        with _signals_held():
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        say(title)
        print(out.stdout.rstrip() or out.stderr.rstrip(), flush=True)

    def run(self) -> float:
        self.start_masakari()
        self.start_relay()
        victim = self.start_guest()
        with step(f"iim-agent watching process '{self.app_name}' (pid {victim.pid}) and "
                  f"probing the web server (pid {self.web.pid}) every second; the relay "
                  "has its hello and heartbeats: detector armed"):
            wait_for("the relay to arm the instance's detector",
                     lambda: self.instance_state() == "armed", WAIT_READY, 0.2)
        self.show("iim-agent status", [str(BIN / "iim-agent"), "status", "-c",
                                       str(self.agent_conf)])
        if self.meltdown:
            say(f"freezing the demo web server (kill -STOP {self.web.pid}): its process "
                "stays, nothing answers; the http probe fails after 2 x 1 s + 0.5 s")
            t_kill = time.time()
            self.web.send_signal(signal.SIGSTOP)
        else:
            say(f"killing the demo app (kill -9 {victim.pid})")
            t_kill = time.time()
            victim.kill()
        found = wait_for("Masakari to record the notification",
                         lambda: self.server.notifications_for(self.instance), WAIT_RECORD, 0.02)
        t_seen = time.time()
        say("Masakari recorded (GET /v1/notifications):")
        print(json.dumps(found[0], indent=2, sort_keys=True), flush=True)
        self.show("iim-relay status", [str(BIN / "iim-relay"), "status", "--config-file",
                                       str(self.relay_conf)])
        if self.meltdown:
            self.web.send_signal(signal.SIGCONT)
        elapsed = t_seen - t_kill
        fault = "freeze" if self.meltdown else "kill"
        say(f"{fault} -> notification visible in GET /v1/notifications: {elapsed * 1000:.0f} ms "
            "(an upper bound: this demo polls the API every 20 ms)")
        return elapsed

    def cleanup(self) -> None:
        # A second Ctrl-C, SIGTERM or SIGHUP must not cut the cleanup short.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a --meltdown web server may be stopped
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.short, ignore_errors=True)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave everything running until Ctrl-C, SIGTERM or SIGHUP")
    parser.add_argument("--meltdown", action="store_true",
                        help="freeze the probed web server (SIGSTOP) instead of killing a process")
    args = parser.parse_args(argv)
    for sig in STOP_SIGNALS:  # Ctrl-C too, so that it waits for a spawn to be recorded
        signal.signal(sig, _raise_stopped)
    workdir = Path(tempfile.mkdtemp(prefix="iim-demo-"))
    demo = Demo(workdir, meltdown=args.meltdown)
    keep_logs = False
    status = 0
    finished = False
    try:
        demo.run()
        finished = True
        if args.keep:
            say(f"running on; logs and configs in {workdir}; try:")
            print(f"    {BIN / 'iim-relay'} status --config-file {demo.relay_conf}\n"
                  f"    {BIN / 'iim-agent'} status -c {demo.agent_conf}", flush=True)
            say(f"Ctrl-C (or kill {os.getpid()}) stops it all and removes {workdir}")
            signal.pause()
    except (KeyboardInterrupt, Stopped) as exc:  # Stopped(SIGINT) for Ctrl-C
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        say(f"{signal.Signals(signum).name}: stopping everything")
        # How a --keep demo is meant to end; anything earlier cut the demo short.
        status = 0 if finished and args.keep else 128 + signum
    except BaseException:
        print(f"demo: failed; logs are in {workdir}", file=sys.stderr)
        keep_logs = True
        raise
    finally:
        demo.cleanup()
        if not keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
