"""Calls that may block (name resolution, ``stat`` on a network filesystem) run in a thread.

:meth:`Offload.submit` starts one short-lived daemon thread per call; the
result comes back through a pipe the reactor watches, and the callback runs
on the agent's loop.  A probe has at most one call outstanding (the probe
set refuses to start another while one is still running), so a resolver or
a mount that hangs costs one parked thread per probe check, never the loop.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Any, Callable, Optional

from guest_agent.reactor import POLLIN, Reactor

LOG = logging.getLogger(__name__)


class Job:
    """One offloaded call: ``result`` or ``error`` once ``finished``."""

    def __init__(self, callback: Callable[[Job], None]) -> None:
        self.callback = callback
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.finished = False
        self.cancelled = False


class Offload:
    def __init__(self, reactor: Reactor) -> None:
        self._reactor = reactor
        self._r: Optional[int] = None
        self._w: Optional[int] = None
        self._done: collections.deque[Job] = collections.deque()  # appended by threads
        self.running = 0

    def _open(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._reactor.add(self._r, POLLIN, self._drain)

    def submit(self, fn: Callable[[], Any], callback: Callable[[Job], None]) -> Job:
        if self._r is None:
            self._open()
        job = Job(callback)
        self.running += 1
        thread = threading.Thread(target=self._run, args=(job, fn), name="iim-probe-io",
                                  daemon=True)
        thread.start()
        return job

    def _run(self, job: Job, fn: Callable[[], Any]) -> None:
        try:
            job.result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop as the job's error
            job.error = exc
        self._done.append(job)
        try:
            os.write(self._w, b"x")  # type: ignore[arg-type]
        except OSError:  # pipe full (the loop wakes anyway) or closed at shutdown
            pass

    def _drain(self, fd: int, revents: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass
        while self._done:
            job = self._done.popleft()
            job.finished = True
            self.running -= 1
            if not job.cancelled:
                job.callback(job)

    def close(self) -> None:
        # A thread still running writes to _w when it ends: keep both ends open then (the
        # agent is exiting), so the write can never land in a reused descriptor.
        if self._r is not None and self.running == 0:
            self._reactor.remove(self._r)
            os.close(self._r)
            os.close(self._w)  # type: ignore[arg-type]
            self._r = self._w = None
