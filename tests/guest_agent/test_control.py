"""The control socket over real UNIX sockets, served by a reactor in a thread."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time

import pytest

from guest_agent.control import (
    AgentNotRunning,
    ControlError,
    ControlServer,
    peer_allowed,
    request,
)
from guest_agent.reactor import Reactor


class Served:
    def __init__(self, path, handler):
        self.reactor = Reactor()
        self.server = ControlServer(str(path), self.reactor, time.monotonic, handler)
        self.server.start()
        self.stop = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop:
            self.reactor.run_once(0.05)
            self.server.on_timer(time.monotonic())

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.server.close()


@pytest.fixture
def served(sock_path):
    calls = []

    def handler(req):
        calls.append(req)
        if req["cmd"] == "boom":
            raise RuntimeError("boom")
        return {"ok": True, "echo": req}

    s = Served(sock_path, handler)
    s.calls = calls
    yield s
    s.close()


def test_request_response(served, sock_path):
    assert request(str(sock_path), {"cmd": "status"}) == {"ok": True, "echo": {"cmd": "status"}}
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600


def test_errors_come_back_as_control_errors(served, sock_path):
    with pytest.raises(ControlError, match="internal error"):
        request(str(sock_path), {"cmd": "boom"})
    for raw in (b"not json\n", b"[1]\n", b'{"nocmd": 1}\n'):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock_path))
            s.sendall(raw)
            answer = s.recv(4096)
        assert b'"ok": false' in answer
    assert request(str(sock_path), {"cmd": "status"})["ok"]  # still serving


def test_silent_client_is_dropped(served, sock_path, monkeypatch):
    monkeypatch.setattr("guest_agent.control.CLIENT_TIMEOUT", 0.2)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock_path))
        s.settimeout(3)
        assert s.recv(10) == b""  # closed by the agent after the timeout


def test_no_agent(sock_path):
    with pytest.raises(
        AgentNotRunning, match=f"no iim-agent is running \\(control socket {sock_path}"
    ):
        request(str(sock_path), {"cmd": "status"})
    # a stale socket file left by a dead agent
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    s.close()
    with pytest.raises(AgentNotRunning):
        request(str(sock_path), {"cmd": "status"})
    # ... is replaced by a new agent
    served = Served(sock_path, lambda req: {"ok": True})
    try:
        assert request(str(sock_path), {"cmd": "x"}) == {"ok": True}
        with pytest.raises(RuntimeError, match="another iim-agent is running"):
            ControlServer(str(sock_path), Reactor(), time.monotonic, lambda r: r).start()
    finally:
        served.close()
    assert not sock_path.exists()


def test_only_root_or_own_uid():
    assert peer_allowed(0, 1000)
    assert peer_allowed(1000, 1000)
    assert not peer_allowed(65534, 0)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch uid")
def test_other_users_are_refused(served, sock_path):
    os.chmod(sock_path, 0o666)  # get past the file mode: SO_PEERCRED must still refuse
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(65534)
            request(str(sock_path), {"cmd": "status"})
            os._exit(1)
        except ControlError as exc:
            os._exit(0 if "permission denied" in str(exc) else 2)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert served.calls == []
