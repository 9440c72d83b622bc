"""Named tasks that are restarted with backoff when they crash or return.

asyncio.TaskGroup needs Python 3.11 and the relay supports 3.10; besides, a
relay part that crashes must be logged and restarted, never take the others
down.  :class:`Supervisor` keeps each part as one named task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Callable, Optional

LOG = logging.getLogger(__name__)

_RESTART_INITIAL = 1.0
_RESTART_MAX = 30.0
_RESTART_STABLE = 60.0  # a part that ran this long restarts from the initial delay


class Supervisor:
    """Named tasks that are restarted with backoff when they crash or return."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tasks: dict[str, asyncio.Task] = {}
        self.restarts: dict[str, int] = {}
        self._stopping: set[asyncio.Task] = set()

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        if name in self._tasks:
            raise ValueError(f"{name} is already running")
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._keep(name, factory), name=name
        )

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        delay = _RESTART_INITIAL
        while True:
            started = self._clock()
            try:
                await factory()
                if asyncio.current_task() in self._stopping:
                    return  # it was asked to stop, and did
                LOG.error("%s stopped on its own; restarting it in %.1fs", name, delay)
            except Exception:  # noqa: BLE001 - the supervisor's job: log and restart
                if asyncio.current_task() in self._stopping:
                    LOG.exception("%s failed while stopping", name)
                    return
                LOG.exception("%s crashed; restarting it in %.1fs", name, delay)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self._clock() - started >= _RESTART_STABLE:
                delay = _RESTART_INITIAL
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX)

    def running(self, name: str) -> bool:
        return name in self._tasks

    async def stop(self, name: str, timeout: Optional[float] = None) -> bool:
        """Cancel ``name``, or first wait up to ``timeout`` for it to end by itself.

        Returns False if it had to be cancelled after waiting.
        """
        task = self._tasks.pop(name, None)
        if task is None:
            return True
        done = True
        self._stopping.add(task)
        try:
            if timeout is not None:
                finished, _ = await asyncio.wait({task}, timeout=timeout)
                done = bool(finished)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            self._stopping.discard(task)
        return done

    async def stop_matching(self, prefix: str) -> int:
        names = [n for n in self._tasks if n.startswith(prefix)]
        tasks = [self._tasks.pop(n) for n in names]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    async def stop_all(self) -> None:
        await self.stop_matching("")
