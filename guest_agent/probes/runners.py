"""One probe in flight, driven by the agent's reactor: nothing here ever blocks.

An :class:`Attempt` starts, registers its sockets, pipes or pidfd with the
reactor and calls ``finish(ok, seen)`` exactly once, from a reactor handler
or from :meth:`Attempt.expire` when its timeout passes (unless cancelled).
Connecting to an address is a non-blocking ``connect``; a host name is
resolved by :mod:`.offload` in a thread, as is a file's ``stat`` (a hung
NFS mount must not stop the loop).  HTTP answers are read only up to the
status line, parsed here: ``http.client`` imports ``ssl``, which alone adds
about 5 MB to the agent's RSS (measured under Python 3.11), for a line that
one regular expression reads.  The exec probe is in :mod:`.execprobe`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import time
from typing import Any, Callable, Optional

from guest_agent.config import CheckConfig
from guest_agent.probes.offload import Job, Offload
from guest_agent.probes.options import Endpoint, parse_hostport, parse_http
from guest_agent.probes.state import secs
from guest_agent.reactor import POLLIN, POLLOUT, Reactor
from iim_protocol import __version__

LOG = logging.getLogger(__name__)

Finish = Callable[[bool, str], None]

MAX_STATUS_LINE = 1024  # an HTTP status line longer than this is not HTTP
READ_CHUNK = 4096


class Attempt:
    """One run of a probe.  ``deadline`` is monotonic; the probe set calls :meth:`expire`."""

    def __init__(self, config: CheckConfig, reactor: Reactor, clock: Callable[[], float],
                 offload: Offload, finish: Finish) -> None:
        self.config = config
        self.reactor = reactor
        self.clock = clock
        self.offload = offload
        self._finish = finish
        self.started = clock()
        self.deadline = self.started + config.timeout
        self.done = False
        self.stage = ""  # where a timeout caught it, e.g. " (connecting)"
        self.job: Optional[Job] = None

    def start(self) -> None:
        raise NotImplementedError

    def next_deadline(self) -> Optional[float]:
        """Besides ``deadline``: when :meth:`on_timer` wants to run (exec without pidfds)."""
        return None

    def on_timer(self, now: float) -> None:
        pass

    @property
    def lingering(self) -> bool:
        """Finished, but something it started (a thread, a killed process) is not gone yet."""
        return self.job is not None and not self.job.finished

    def linger_reason(self) -> str:
        return f"the previous probe is still running after {secs(self.clock() - self.started)} s"

    def finish(self, ok: bool, seen: str) -> None:
        if self.done:
            return
        self.done = True
        self.cleanup()
        self._finish(ok, seen)

    def expire(self, now: float) -> None:
        self.finish(False, f"timed out after {secs(self.config.timeout)} s{self.stage}")

    def cancel(self) -> None:
        """Stop without a result (the check was removed or changed)."""
        self.done = True
        if self.job is not None:
            self.job.cancelled = True
        self.cleanup()

    def cleanup(self) -> None:
        pass

    def elapsed(self) -> float:
        return self.clock() - self.started


# -- tcp and http ------------------------------------------------------------------


def connect_error(err: int) -> str:
    if err == errno.ECONNREFUSED:
        return "connect refused"
    return f"connect failed: {os.strerror(err)}"


class TcpAttempt(Attempt):
    """Healthy when a TCP connection is accepted."""

    def endpoint(self) -> Endpoint:
        return parse_hostport(self.config.target)

    def start(self) -> None:
        self.sock: Optional[socket.socket] = None
        end = self.endpoint()
        if end.numeric:
            family = socket.AF_INET6 if ":" in end.host else socket.AF_INET
            self._connect(family, (end.host, end.port))
            return
        self.stage = f" (resolving {end.host})"
        self.job = self.offload.submit(
            lambda: socket.getaddrinfo(end.host, end.port, type=socket.SOCK_STREAM),
            self._resolved,
        )

    def _resolved(self, job: Job) -> None:
        if job.error is not None:
            self.finish(False, f"cannot resolve {self.endpoint().host}: {job.error}")
            return
        family, _type, _proto, _name, sockaddr = job.result[0]
        self._connect(family, sockaddr)

    def _connect(self, family: int, sockaddr: Any) -> None:
        self.stage = " (connecting)"
        try:
            self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            err = self.sock.connect_ex(sockaddr)
        except OSError as exc:
            self.finish(False, f"connect failed: {exc.strerror or exc}")
            return
        if err not in (0, errno.EINPROGRESS):
            self.finish(False, connect_error(err))
            return
        self.reactor.add(self.sock.fileno(), POLLOUT, self._on_connect)

    def _on_connect(self, fd: int, revents: int) -> None:
        assert self.sock is not None
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.finish(False, connect_error(err))
            return
        self.connected()

    def connected(self) -> None:
        self.finish(True, f"connected in {self.elapsed():.2f} s")

    def cleanup(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            self.reactor.remove(sock.fileno())
            sock.close()
            self.sock = None


# RFC 9112 section 4: HTTP-version SP status-code SP [ reason-phrase ]
_STATUS_LINE = re.compile(rb"HTTP/\d\.\d ([1-5]\d\d)(?: [^\r\n]*)?\r?$")


def http_status(head: bytes) -> int:
    """The status code of an answer's status line; ValueError when it is no HTTP answer."""
    line = head.split(b"\n", 1)[0]
    m = _STATUS_LINE.fullmatch(line)
    if m is None:
        shown = line.rstrip(b"\r")[:40].decode("ascii", "replace")
        shown = "".join(ch if ch.isprintable() else "?" for ch in shown)
        raise ValueError(f"not an HTTP answer: {shown!r}")
    return int(m.group(1))


class HttpAttempt(TcpAttempt):
    """GET the URL; healthy on 200-399, or on the codes listed in ``status``."""

    def endpoint(self) -> Endpoint:
        return parse_http(self.config.target)

    def connected(self) -> None:
        end = self.endpoint()
        self.stage = " (connected, no answer)"
        self._out = (
            f"GET {end.path} HTTP/1.1\r\nHost: {end.netloc}\r\n"
            f"User-Agent: iim-agent/{__version__}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("ascii", "replace")
        self._in = bytearray()
        assert self.sock is not None
        self.reactor.add(self.sock.fileno(), POLLOUT, self._on_writable)

    def _on_writable(self, fd: int, revents: int) -> None:
        assert self.sock is not None
        try:
            n = self.sock.send(self._out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.finish(False, f"send failed: {exc.strerror or exc}")
            return
        self._out = self._out[n:]
        if not self._out:
            self.reactor.add(fd, POLLIN, self._on_readable)

    def _on_readable(self, fd: int, revents: int) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self.finish(False, f"connection failed: {exc.strerror or exc}")
            return
        self._in += data[: MAX_STATUS_LINE + 2 - len(self._in)]
        if not data and not self._in:
            self.finish(False, "connection closed without an answer")
            return
        if b"\n" not in self._in and data and len(self._in) <= MAX_STATUS_LINE:
            return
        try:
            code = http_status(bytes(self._in))
        except ValueError as exc:
            self.finish(False, str(exc))
            return
        healthy = code in self.config.status if self.config.status else 200 <= code < 400
        self.finish(healthy, f"HTTP {code} in {self.elapsed():.2f} s")


# -- file --------------------------------------------------------------------------


def stamp_age(path: str) -> float:
    """Seconds since ``path`` was modified (runs in an offload thread)."""
    return time.time() - os.stat(path).st_mtime


class FileAttempt(Attempt):
    """Healthy while the file's mtime is younger than ``max_age``."""

    age: Optional[float] = None

    def start(self) -> None:
        self.stage = " (stat did not return)"
        self.job = self.offload.submit(lambda: stamp_age(self.config.target), self._statted)

    def _statted(self, job: Job) -> None:
        if job.error is not None:
            err = job.error
            why = getattr(err, "strerror", None) or str(err)
            self.finish(False, f"cannot stat {self.config.target}: {why}")
            return
        self.age = max(0.0, float(job.result))
        if self.age <= self.config.max_age:
            self.finish(True, f"modified {secs(self.age)} s ago")
        else:
            self.finish(False, f"modified {secs(self.age)} s ago (max_age "
                               f"{secs(self.config.max_age)} s)")
