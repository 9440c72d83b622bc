"""Blocking work off the event loop, in one named daemon thread per job.

The outbox's sqlite commits fsync, and a frozen or failing disk can hold a
call for as long as it likes.  :class:`Worker` runs such calls one at a time
in its own thread and hands the result back to the loop as an awaitable, so
the loop (channels, timers, ``status``) never waits for the disk.

Why not ``asyncio.to_thread``: the default executor's threads are joined at
interpreter exit, so a call stuck on a frozen file system would stop the
relay from ever exiting.  A Worker's thread is a daemon: a relay told to stop
stops, and whatever was not committed is recovered from the levels the
guests send after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any, Callable, Optional

LOG = logging.getLogger(__name__)


class Worker:
    """One daemon thread running submitted calls in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._busy_since: Optional[float] = None  # time.monotonic() of the running call

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, future, fn, args = item
            self._busy_since = time.monotonic()
            try:
                outcome: tuple[Any, Optional[BaseException]] = (fn(*args), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                outcome = (None, exc)
            finally:
                self._busy_since = None
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop is gone (the relay stopped meanwhile)
                LOG.debug("%s: a call finished after its event loop closed", self.name)

    def busy_for(self) -> float:
        """Seconds the current call has been running (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``fn(*args)`` in the thread; await the returned future on the loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ensure_thread()
        self._queue.put((loop, future, fn, args))
        return future

    def close(self) -> None:
        """Let the thread end after the calls queued so far (never waits for it)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None


def _settle(future: asyncio.Future, result: Any, exc: Optional[BaseException]) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
