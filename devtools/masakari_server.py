"""A real masakari-api on 127.0.0.1, from its own virtualenv: for tests, demo and benchmarks.

masakari is installed by ``scripts/test`` into ``$IIM_MASAKARI_VENV`` (default
``~/.cache/iim/masakari-venv``), never into iim's own environment.  The server runs
with ``auth_strategy = noauth2``, sqlite, ``transport_url = fake:/`` (notifications
are accepted and stay ``new``; no engine is needed) and ``notification_delay_max = 0``
(without it masakari-api sleeps a random 0-5 s before recording each notification).

Compute hosts cannot be created through the API without Nova, so
:meth:`MasakariServer.create_host` writes them with masakari's own object layer,
running a small script with the masakari venv's python against the same config.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

NOAUTH_HEADERS = {"X-Auth-Token": "admin:admin", "Accept": "application/json"}
START_TIMEOUT = 60.0  # masakari-api listens after about 3 s here
STOP_TIMEOUT = 15.0
SEGMENT_NAME = "iim-test-segment"


def masakari_venv() -> Path:
    return Path(
        os.environ.get("IIM_MASAKARI_VENV")
        or os.path.expanduser("~/.cache/iim/masakari-venv")
    )


class MasakariUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_HOST_SCRIPT = r"""
import sys
import warnings
warnings.simplefilter('ignore')
import masakari.conf
from masakari import context, objects, rpc

conf_file, action, name, flag = sys.argv[1:5]
masakari.conf.CONF(["--config-file", conf_file], project="masakari")
rpc.init(masakari.conf.CONF)  # Host.create() emits a versioned notification (fake:/)
objects.register_all()
ctx = context.get_admin_context()
on_maintenance = flag == "1"
if action == "create":
    segment = objects.FailoverSegment.get_by_name(ctx, sys.argv[5])
    host = objects.Host(context=ctx, name=name, type="COMPUTE", control_attributes="SSH",
                        reserved=False, on_maintenance=on_maintenance,
                        failover_segment=segment)
    host.create()
elif action == "maintenance":
    host = objects.Host.get_by_name(ctx, name)
    host.on_maintenance = on_maintenance
    host.save()
print(objects.Host.get_by_name(ctx, name).uuid)
"""


class MasakariServer:
    """One masakari-api process (restartable on the same port and database)."""

    def __init__(self, workdir: Path, venv: Optional[Path] = None):
        self.venv = Path(venv or masakari_venv())
        api = self.venv / "bin" / "masakari-api"
        if not os.access(api, os.X_OK):
            raise MasakariUnavailable(
                f"masakari-api not found at {api}: run scripts/test (it installs masakari "
                "into $IIM_MASAKARI_VENV, default ~/.cache/iim/masakari-venv), or point "
                "IIM_MASAKARI_VENV at a virtualenv with `pip install masakari`"
            )
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = self.workdir / "masakari-api.log"
        self.conf_file = self.workdir / "masakari.conf"
        self.segment_uuid: Optional[str] = None
        self.hosts: dict[str, str] = {}  # name -> uuid of hosts made by create_host()
        self._proc: Optional[subprocess.Popen] = None
        self._write_conf()

    # -- lifecycle --------------------------------------------------------------

    def _write_conf(self) -> None:
        paste = self.venv / "etc" / "masakari" / "api-paste.ini"
        if not paste.exists():  # an older wheel layout: look for it anywhere in the venv
            found = sorted(self.venv.rglob("api-paste.ini"))
            if not found:
                raise MasakariUnavailable(f"no api-paste.ini in {self.venv}: reinstall masakari")
            paste = found[0]
        self.conf_file.write_text(
            "[DEFAULT]\n"
            "auth_strategy = noauth2\n"
            "masakari_api_listen = 127.0.0.1\n"
            f"masakari_api_listen_port = {self.port}\n"
            "masakari_api_workers = 1\n"
            "transport_url = fake:/\n"
            "notification_delay_max = 0\n"
            f"log_file = {self.log_file}\n"
            "use_stderr = false\n"
            "debug = false\n"
            "[database]\n"
            f"connection = sqlite:///{self.workdir / 'masakari.db'}\n"
            "[taskflow]\n"
            f"connection = sqlite:///{self.workdir / 'taskflow.db'}\n"
            "[wsgi]\n"
            f"api_paste_config = {paste}\n"
        )

    def _run(self, *args: str, timeout: float = 120.0) -> str:
        proc = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, cwd=self.workdir
        )
        if proc.returncode != 0:
            raise MasakariUnavailable(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                f"\n--- {self.log_file}:\n{self.log_tail()}"
            )
        return proc.stdout

    def db_sync(self) -> None:
        self._run(str(self.venv / "bin" / "masakari-manage"), "--config-file",
                  str(self.conf_file), "db", "sync")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start masakari-api and wait (bounded) until GET / answers."""
        if self.running:
            return
        out = open(self.workdir / "masakari-api.stdout", "ab")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [str(self.venv / "bin" / "masakari-api"), "--config-file", str(self.conf_file)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True,  # its own group: it forks a worker
            )
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MasakariUnavailable(
                    f"masakari-api exited with {self._proc.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            try:
                status, _ = self.request("GET", "/", timeout=2.0)
                if status in (200, 300):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise MasakariUnavailable(
            f"masakari-api did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the server (and its worker) and wait until the port is closed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
        # the forked worker may outlive the parent for a moment: kill what is left
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"masakari-api still listening on {self.port} after stop()")

    # -- API helpers ------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None,
                timeout: float = 10.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(NOAUTH_HEADERS)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def create_segment(self, name: str = SEGMENT_NAME) -> str:
        status, doc = self.request("POST", "/v1/segments", {
            "segment": {"name": name, "recovery_method": "auto", "service_type": "COMPUTE"}
        })
        if status not in (200, 201):
            raise MasakariUnavailable(f"POST /v1/segments answered {status}: {doc}")
        self.segment_uuid = doc["segment"]["uuid"]
        return self.segment_uuid

    def _host_script(self, action: str, name: str, flag: bool) -> str:
        return self._run(str(self.venv / "bin" / "python"), "-c", _HOST_SCRIPT,
                         str(self.conf_file), action, name, "1" if flag else "0",
                         SEGMENT_NAME).strip()

    def create_host(self, name: str, on_maintenance: bool = False) -> str:
        """Register a compute host in the test segment; returns its uuid."""
        self.hosts[name] = self._host_script("create", name, on_maintenance)
        return self.hosts[name]

    def set_maintenance(self, name: str, on_maintenance: bool) -> None:
        self._host_script("maintenance", name, on_maintenance)

    def list_notifications(self, **filters: str) -> list[dict]:
        """GET /v1/notifications (newest first), optionally filtered client-side."""
        status, doc = self.request("GET", "/v1/notifications?limit=1000")
        if status != 200:
            raise RuntimeError(f"GET /v1/notifications answered {status}: {doc}")
        found = doc["notifications"]
        for key, value in filters.items():
            if key == "instance_uuid":
                found = [n for n in found if n["payload"].get("instance_uuid") == value]
            else:
                found = [n for n in found if n.get(key) == value]
        return found

    def notifications_for(self, instance_uuid: str) -> list[dict]:
        return self.list_notifications(instance_uuid=instance_uuid)


def start_server(workdir: Path) -> MasakariServer:
    """Configure, migrate and start masakari-api, with one failover segment."""
    server = MasakariServer(workdir)
    server.db_sync()
    try:  # a signal or an error while it starts must not leave masakari-api running
        server.start()
        server.create_segment()
    except BaseException:
        server.stop()
        raise
    return server
