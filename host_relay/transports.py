"""How the relay opens one instance's channel: a UNIX socket, a serial pty, or a TCP serial port.

QEMU's virtio-serial channel is a UNIX socket it listens on (``unix``).  The
serial fallback reads the host end of a guest serial port instead: a pty
(``/dev/pts/N``, opened as a raw terminal so the line discipline neither
echoes bytes back into the guest nor rewrites line ends) or, when Nova's
serial console is enabled, a TCP port QEMU listens on (``tcp:HOST:PORT``).
Each is opened as an :class:`Endpoint`: a non-blocking descriptor the channel
waits on and reads itself, one chunk at a time, and a best-effort ``write()``
for the relay's ``sync`` request (never awaited).
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import termios
import tty
from typing import Any, Optional

from host_relay.domains import ORIGIN_SERIAL, TCP_PREFIX, parse_endpoint

UNIX = "unix"
PTY = "pty"
TCP = "tcp"
TRANSPORTS = (UNIX, PTY, TCP)


def transport_for(path: str, origin: str) -> str:
    """The transport a channel path needs: serial origins are ptys or TCP, the rest sockets."""
    if path.startswith(TCP_PREFIX):
        return TCP
    return PTY if origin == ORIGIN_SERIAL else UNIX


def is_closed_by_peer(exc: BaseException) -> bool:
    """A hang-up, not a failure: a pty whose other end (QEMU) went away reads EIO, and a
    socket closed by a guest with unread data in it reads ECONNRESET."""
    return isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.ECONNRESET)


class Endpoint:
    """One open channel as a non-blocking file descriptor the relay reads itself.

    The relay waits for it to be readable, then takes up to one chunk with one
    ``read``: no stream buffer in between, so the channel's whole input cost
    (system call, decoding, detector) is measured where it is read, and a
    channel that is not read costs nothing (the kernel buffer holds the guest).

    The fd stays registered with the loop from one wait to the next, so an
    honest guest's heartbeat costs no epoll_ctl calls (adding and removing the
    reader for every heartbeat was about a fifth of the relay's CPU at 2,000
    instances).  epoll is level-triggered: a readable fd that nobody waits for
    (its channel held back by a budget) would wake the loop on every turn, so
    the first wake-up without a waiter removes the reader, and the next wait
    adds it again.  A wake-up can also be stale: the loop polled the fd, then
    ran the task that read it dry, then the callback; a zero-timeout poll of
    this one fd tells, for one system call instead of a task switch and a read
    that finds nothing.
    """

    def __init__(self, fd: int, owner: Any) -> None:
        self.fd = fd
        self._owner = owner  # the socket or file object that closes the fd
        self._loop: Optional[asyncio.AbstractEventLoop] = None  # set while registered
        self._waiter: Optional[asyncio.Future] = None
        self._poll = select.poll()  # no kernel object: a one-entry list for poll(2)
        self._poll.register(fd, select.POLLIN)

    async def readable(self) -> None:
        """Return once a read would not block (data, end of file or an error)."""
        loop = asyncio.get_running_loop()
        ready = self._waiter = loop.create_future()
        if self._loop is None:
            loop.add_reader(self.fd, self._on_readable)
            self._loop = loop
        try:
            await ready
        finally:
            self._waiter = None

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None:  # nobody reads now: stop the level-triggered wake-ups
            self._unregister()
        elif not waiter.done() and self._poll.poll(0):
            waiter.set_result(None)
        # else: woken already and its task has not run yet (the read comes), or
        # a stale wake-up for data that was read since the loop polled

    def _unregister(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            loop.remove_reader(self.fd)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at end of file; BlockingIOError when none are there."""
        return os.read(self.fd, n)

    def write(self, data: bytes) -> bool:
        """Best effort, never blocks: False if the channel cannot take it now."""
        try:
            return os.write(self.fd, data) == len(data)
        except BlockingIOError:
            return False

    def close(self) -> None:
        """Unregister, then close: a closed fd left in the loop's selector would
        shadow the next file that gets its number."""
        try:
            self._unregister()
        finally:
            self._owner.close()


async def open_channel(path: str, transport: str) -> Endpoint:
    """Open ``path`` with ``transport``; raises OSError as a socket connect would."""
    loop = asyncio.get_running_loop()
    if transport in (UNIX, TCP):
        if transport == UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = path
        else:
            _, (host, port) = parse_endpoint(path)
            family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            address = (host, port)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return Endpoint(sock.fileno(), sock)
    if transport != PTY:
        raise ValueError(f"unknown channel transport {transport!r} (known: {TRANSPORTS})")
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        tty.setraw(fd)
    except termios.error as exc:
        os.close(fd)
        raise OSError(errno.ENOTTY, f"{path} is not a terminal: {exc}") from None
    return Endpoint(fd, os.fdopen(fd, "rb", buffering=0))
