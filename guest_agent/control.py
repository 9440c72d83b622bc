"""The control socket: ``status``, ``pause`` and ``resume`` reach the running agent.

Protocol: a client connects to the UNIX socket, writes one JSON object on one
line and reads one JSON object on one line back, then the agent closes the
connection.  Requests::

    {"cmd": "status"}
    {"cmd": "pause", "duration": 600.0, "reason": "upgrading nginx"}
    {"cmd": "resume"}

Responses are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
Only root may use it: the socket is mode 0600 and every peer's uid is checked
with SO_PEERCRED (root or the agent's own uid).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import struct
from typing import Any, Callable, Optional

from guest_agent.reactor import POLLIN, Reactor

LOG = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096  # one small JSON object; more is a confused client
MAX_CLIENTS = 8  # root-only tool: a handful at a time is plenty
CLIENT_TIMEOUT = 5.0  # a client that says nothing for this long is dropped
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Handler = Callable[[dict[str, Any]], dict[str, Any]]



def bind_private(sock: socket.socket, path: str, mode: int) -> int:
    """Bind the UNIX socket ``sock`` at ``path`` with no moment in which others could
    connect (umask 0177 while binding), then give it ``mode``; ``sock`` is closed if the
    bind fails.  Returns the socket file's inode (to tell it was replaced)."""
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    return os.stat(path).st_ino

class AgentNotRunning(Exception):
    """No agent answers on the control socket."""


class ControlError(Exception):
    """The agent answered with an error, or not at all."""


def peer_allowed(peer_uid: int, own_uid: int) -> bool:
    """Root, and the uid the agent runs as, may use the control socket."""
    return peer_uid in (0, own_uid)


class _Client:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.deadline = deadline
        self.allowed = False


class ControlServer:
    """Serves requests from the reactor's loop; never blocks on a client."""

    def __init__(
        self, path: str, reactor: Reactor, clock: Callable[[], float], handler: Handler
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._clock = clock
        self._handler = handler
        self._sock: Optional[socket.socket] = None
        self._clients: dict[int, _Client] = {}
        self._inode: Optional[int] = None

    def start(self) -> None:
        """Bind the socket; raise RuntimeError when another agent already serves it."""
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._inode = bind_private(sock, self.path, 0o600)
        sock.listen(MAX_CLIENTS)
        sock.setblocking(False)
        self._sock = sock
        self._reactor.add(sock.fileno(), POLLIN, self._on_accept)
        LOG.info("control socket %s", self.path)

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # left behind by an agent that died
            return
        finally:
            probe.close()
        raise RuntimeError(f"another iim-agent is running (control socket {self.path})")

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        if self._sock is not None:
            self._reactor.remove(self._sock.fileno())
            self._sock.close()
            self._sock = None
            try:  # only our own socket: a newer agent may have replaced it
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass

    def next_deadline(self) -> Optional[float]:
        if not self._clients:
            return None
        return min(c.deadline for c in self._clients.values())

    def on_timer(self, now: float) -> None:
        for fd, client in list(self._clients.items()):
            if now >= client.deadline:
                LOG.debug("control client timed out")
                self._drop(fd)

    def _on_accept(self, fd: int, revents: int) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, _gid = _UCRED.unpack(creds)
        allowed = peer_allowed(uid, os.getuid())
        if not allowed:
            LOG.warning("control socket: refused pid %s (uid %s)", pid, uid)
        if len(self._clients) >= MAX_CLIENTS:
            self._reply(conn, {"ok": False, "error": "busy: too many clients"})
            conn.close()
            return
        client = _Client(conn, self._clock() + CLIENT_TIMEOUT)
        client.allowed = allowed  # refused after reading the request, so no reset
        self._clients[conn.fileno()] = client
        self._reactor.add(conn.fileno(), POLLIN, self._on_client)

    def _on_client(self, fd: int, revents: int) -> None:
        client = self._clients.get(fd)
        if client is None:
            return
        try:
            data = client.sock.recv(MAX_REQUEST_BYTES)
        except BlockingIOError:
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            self._drop(fd)
            return
        client.buf += data
        if b"\n" not in client.buf:
            if len(client.buf) > MAX_REQUEST_BYTES:
                self._reply(client.sock, {"ok": False, "error": "request too long"})
                self._drop(fd)
            return
        line = bytes(client.buf.split(b"\n", 1)[0])
        if client.allowed:
            self._reply(client.sock, self._answer(line))
        else:
            self._reply(client.sock, {"ok": False, "error": "permission denied: root only"})
        self._drop(fd)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {"ok": False, "error": "not a JSON request"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'a request is a JSON object with "cmd"'}
        try:
            return self._handler(request)
        except Exception:  # noqa: BLE001 - a bad request must never stop the agent
            LOG.exception("control request %s failed", request.get("cmd"))
            return {"ok": False, "error": "internal error; see the agent's log"}

    def _reply(self, sock: socket.socket, response: dict[str, Any]) -> None:
        data = (json.dumps(response, sort_keys=True) + "\n").encode("utf-8")
        try:
            sock.send(data)  # far below the socket buffer: one send suffices
        except OSError as exc:
            LOG.debug("control client went away: %s", exc)

    def _drop(self, fd: int) -> None:
        client = self._clients.pop(fd, None)
        if client is not None:
            self._reactor.remove(fd)
            client.sock.close()


def request(path: str, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the agent at ``path`` and return its response.

    Raises :class:`AgentNotRunning` when nothing listens there and
    :class:`ControlError` for anything else that goes wrong.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentNotRunning(
                f"no iim-agent is running (control socket {path}: {exc.strerror})"
            ) from None
        except PermissionError as exc:
            raise ControlError(
                f"cannot use control socket {path}: {exc.strerror} (run as root)"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENOTSOCK:
                raise AgentNotRunning(
                    f"no iim-agent is running (control socket {path}: not a socket)"
                ) from None
            raise ControlError(f"cannot use control socket {path}: {exc}") from None
        try:
            sock.sendall((json.dumps(payload) + "\n").encode("utf-8"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered (a refusal) and closed before reading: the answer is queued
        data = bytearray()
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise ControlError(f"iim-agent did not answer on {path} within {timeout:g}s") from None
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc}") from None
    finally:
        sock.close()
    try:
        response = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError(f"iim-agent sent a malformed answer on {path}") from None
    if not isinstance(response, dict):
        raise ControlError(f"iim-agent sent a malformed answer on {path}")
    if not response.get("ok"):
        raise ControlError(str(response.get("error", "request failed")))
    return response
