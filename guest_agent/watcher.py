"""Seeing watched processes exit: pidfds where the kernel has them, else polling.

A pidfd (``os.pidfd_open``, Linux 5.3+) becomes readable the moment its
process exits, so poll() wakes within a fraction of a millisecond.  Where
pidfds are missing (older Python or kernel: AttributeError or ENOSYS) or run
out (EMFILE), the watched processes are checked with psutil every
:data:`POLL_INTERVAL` seconds instead.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Callable, Optional

from guest_agent.processes import Identity, PsutilSource
from guest_agent.reactor import POLLIN, Reactor

LOG = logging.getLogger(__name__)

# Without pidfds an exit is seen within this; psutil costs ~50 us per watched pid.
POLL_INTERVAL = 0.5


def pidfds_supported() -> bool:
    """True when this Python and kernel can open pidfds."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        return False
    os.close(fd)
    return True


class PidWatcher:
    """Watches identities; calls ``on_exit(identity)`` once for each that exits."""

    def __init__(
        self,
        source: PsutilSource,
        on_exit: Callable[[Identity], None],
        clock: Callable[[], float],
        reactor: Optional[Reactor] = None,
        use_pidfd: Optional[bool] = None,
    ) -> None:
        self._source = source
        self._on_exit = on_exit
        self._clock = clock
        self._reactor = reactor
        if use_pidfd is None:
            use_pidfd = reactor is not None and pidfds_supported()
        self.use_pidfd = use_pidfd and reactor is not None
        self._fds: dict[int, Identity] = {}
        self._watched: dict[Identity, Optional[int]] = {}  # identity -> pidfd or None (polled)
        self._next_poll: Optional[float] = None

    @property
    def method(self) -> str:
        return "pidfd" if self.use_pidfd else "poll"

    def watching(self) -> list[Identity]:
        return list(self._watched)

    def watch(self, identity: Identity) -> bool:
        """Start watching; False when the process is already gone."""
        if identity in self._watched:
            return True
        fd = self._open_pidfd(identity[0]) if self.use_pidfd else None
        if fd == -1:
            return False
        # The scan that found it and the pidfd are not atomic: make sure the pid
        # was not reused in between.
        if not self._source.is_alive(identity):
            if fd is not None:
                os.close(fd)
            return False
        self._watched[identity] = fd
        if fd is not None:
            assert self._reactor is not None
            self._fds[fd] = identity
            self._reactor.add(fd, POLLIN, self._on_ready)
        elif self._next_poll is None:
            self._next_poll = self._clock() + POLL_INTERVAL
        return True

    def unwatch(self, identity: Identity) -> None:
        fd = self._watched.pop(identity, None)
        if fd is not None:
            self._close(fd)

    def close(self) -> None:
        for identity in list(self._watched):
            self.unwatch(identity)

    def next_deadline(self) -> Optional[float]:
        return self._next_poll

    def on_timer(self, now: float) -> None:
        """Check the polled identities when their time has come."""
        if self._next_poll is None or now < self._next_poll:
            return
        polled = [i for i, fd in self._watched.items() if fd is None]
        self._next_poll = now + POLL_INTERVAL if polled else None
        for identity in polled:
            if not self._source.is_alive(identity):
                self._watched.pop(identity, None)
                self._on_exit(identity)

    def _open_pidfd(self, pid: int) -> Optional[int]:
        """A pidfd, -1 when the process is gone, None to poll this pid instead."""
        try:
            return os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return -1
            if exc.errno == errno.ENOSYS:
                LOG.warning(
                    "pidfds are not supported by this kernel: polling every %ss", POLL_INTERVAL
                )
                self.use_pidfd = False
            else:
                LOG.warning("cannot open a pidfd for pid %s (%s): polling it", pid, exc)
            return None

    def _on_ready(self, fd: int, revents: int) -> None:
        identity = self._fds.get(fd)
        if identity is None:
            return
        self._watched.pop(identity, None)
        self._close(fd)
        self._on_exit(identity)

    def _close(self, fd: int) -> None:
        self._fds.pop(fd, None)
        if self._reactor is not None:
            self._reactor.remove(fd)
        os.close(fd)
