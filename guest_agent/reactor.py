"""A minimal poll loop: fds with handlers, one ``select.poll`` for all of them."""

from __future__ import annotations

import errno
import logging
import math
import select
from typing import Callable, Optional

LOG = logging.getLogger(__name__)

Handler = Callable[[int, int], None]

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
POLLHUP = select.POLLHUP
POLLERR = select.POLLERR
POLLNVAL = select.POLLNVAL


class Reactor:
    """Registers fds with a handler each; :meth:`run_once` dispatches ready ones."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._handlers: dict[int, Handler] = {}

    def add(self, fd: int, events: int, handler: Handler) -> None:
        if fd in self._handlers:
            self._poll.modify(fd, events)
        else:
            self._poll.register(fd, events)
        self._handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        if fd in self._handlers:
            self._poll.modify(fd, events)

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def __contains__(self, fd: int) -> bool:
        return fd in self._handlers

    def run_once(self, timeout: Optional[float]) -> int:
        """Wait at most ``timeout`` seconds (None: forever); return how many fds were ready."""
        ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        try:
            ready = self._poll.poll(ms)
        except OSError as exc:  # pragma: no cover - EINTR is retried by Python itself
            if exc.errno != errno.EINTR:
                raise
            return 0
        for fd, revents in ready:
            handler = self._handlers.get(fd)
            if handler is not None:  # a previous handler may have removed it
                handler(fd, revents)
        return len(ready)
