"""The heartbeat socket: ``sd_notify``-format datagrams, senders known by their credentials.

An application reports itself alive by sending a datagram of newline
separated ``KEY=VALUE`` assignments, as ``sd_notify(3)`` does, to the
agent's notify socket (``notify_socket``, default
``/run/iim-agent/notify.sock``)::

    WATCHDOG=1              a beat (READY=1 counts as one too)
    WATCHDOG=trigger        the application says it failed: the check fails now
    STATUS=text             shown in status and in the failure reason
    IIM_HEARTBEAT=worker    which heartbeat check (its `heartbeat:` value)

Without ``IIM_HEARTBEAT`` the datagram is for the heartbeat checks whose
``user`` is the sender's uid, so an unmodified sd_notify application only
needs ``NOTIFY_SOCKET`` pointed here.  Who may send is decided by the
socket's mode (0600 when only root may beat, writable by all when a check
names a ``user``) and by the sender's credentials, which the kernel attaches
(SO_PASSCRED): root and the agent's own uid may beat any check, another uid
only the checks whose ``user`` it is.  What the datagram claims about its
sender is never trusted.  Datagrams are bounded (:data:`MAX_DATAGRAM_BYTES`,
:data:`MAX_PER_WAKE` per loop turn).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
from collections.abc import Mapping
from typing import Callable, Optional

from guest_agent.control import bind_private
from guest_agent.reactor import POLLIN, Reactor

LOG = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 4096  # sd_notify messages are a few dozen bytes
MAX_PER_WAKE = 64  # datagrams handled per loop turn: a flood never starves the loop
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SO_PASSCRED = getattr(socket, "SO_PASSCRED", 16)
_SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)

# (pid, uid, gid) of the sender, the datagram's assignments
Handler = Callable[[tuple[int, int, int], Mapping[str, str]], None]


def parse_datagram(data: bytes) -> Optional[dict[str, str]]:
    """The assignments of an sd_notify datagram; None when it is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    out: dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            return None
        out[key] = value
    return out or None


class NotifyServer:
    """A bound datagram socket handing each accepted datagram to ``handler``."""

    def __init__(self, path: str, mode: int, reactor: Reactor, handler: Handler) -> None:
        self.path = path
        self.mode = mode
        self._reactor = reactor
        self._handler = handler
        self._sock: Optional[socket.socket] = None
        self._inode: Optional[int] = None
        self.received = 0
        self.malformed = 0

    def start(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            os.unlink(self.path)  # our own, left by an agent that stopped (one agent runs)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
        self._inode = bind_private(sock, self.path, self.mode)
        sock.setblocking(False)
        self._sock = sock
        self._reactor.add(sock.fileno(), POLLIN, self._on_ready)
        LOG.info("heartbeat socket %s (mode %04o)", self.path, self.mode)

    def set_mode(self, mode: int) -> None:
        if mode != self.mode and self._sock is not None:
            os.chmod(self.path, mode)
        self.mode = mode

    def close(self) -> None:
        if self._sock is None:
            return
        self._reactor.remove(self._sock.fileno())
        self._sock.close()
        self._sock = None
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    def _on_ready(self, fd: int, revents: int) -> None:
        assert self._sock is not None
        for _ in range(MAX_PER_WAKE):
            try:
                data, ancdata, flags, _addr = self._sock.recvmsg(
                    MAX_DATAGRAM_BYTES, socket.CMSG_SPACE(_UCRED.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                LOG.warning("heartbeat socket: %s", exc)
                return
            self.received += 1
            creds = None
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == _SCM_CREDENTIALS:
                    creds = _UCRED.unpack(value[: _UCRED.size])
            fields = None if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) else (
                parse_datagram(data))
            if creds is None or fields is None:
                self.malformed += 1
                continue
            self._handler(creds, fields)


def send_beat(path: str, name: str, status: str = "") -> None:
    """What ``iim-agent beat NAME`` sends; OSError when nothing listens at ``path``."""
    lines = [f"IIM_HEARTBEAT={name}", "WATCHDOG=1"]
    if status:
        lines.append(f"STATUS={status}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.settimeout(1.0)
        sock.sendto("\n".join(lines).encode("utf-8"), path)
    finally:
        sock.close()
