"""How the relay opens one instance's channel: a UNIX socket, a serial pty, or a TCP serial port.

QEMU's virtio-serial channel is a UNIX socket it listens on (``unix``).  The
serial fallback reads the host end of a guest serial port instead: a pty
(``/dev/pts/N``, opened as a raw terminal so the line discipline neither
echoes bytes back into the guest nor rewrites line ends) or, when Nova's
serial console is enabled, a TCP port QEMU listens on (``tcp:HOST:PORT``).
Each opener returns an asyncio StreamReader and something with ``close()`` and a
non-blocking ``write()`` (the relay's ``sync`` request; never awaited).
"""

from __future__ import annotations

import asyncio
import errno
import os
import termios
import tty
from typing import Any

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


class _PipeCloser:
    def __init__(self, transport: asyncio.ReadTransport, fd: int) -> None:
        self._transport = transport
        self._fd = fd

    def write(self, data: bytes) -> None:
        """Best effort: a pty whose buffer is full drops it (the guest is not reading)."""
        try:
            os.write(self._fd, data)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._transport.close()


async def open_stream(path: str, transport: str, limit: int) -> tuple[asyncio.StreamReader, Any]:
    """Open ``path`` with ``transport``; raises OSError as a socket connect would."""
    if transport == UNIX:
        return await asyncio.open_unix_connection(path, limit=limit)
    if transport == TCP:
        _, (host, port) = parse_endpoint(path)
        return await asyncio.open_connection(host, port, limit=limit)
    if transport != PTY:
        raise ValueError(f"unknown channel transport {transport!r} (known: {TRANSPORTS})")
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        tty.setraw(fd)
    except termios.error as exc:
        os.close(fd)
        raise OSError(errno.ENOTTY, f"{path} is not a terminal: {exc}") from None
    pipe = os.fdopen(fd, "rb", buffering=0)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    try:
        read_transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
    except BaseException:
        pipe.close()
        raise
    return reader, _PipeCloser(read_transport, fd)
