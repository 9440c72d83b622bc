"""Reconnect with backoff: the one delay policy for everything in the relay that retries.

Guest channels, the libvirt watcher, the metrics server, supervised tasks
and Masakari delivery all wait longer after each failure in a row, up to a
cap, with some randomness so that many clients do not retry in lock-step,
and start again from the first delay once things have worked for a while.

Sans-I/O, like the detector: :class:`Backoff` never sleeps and never reads a
clock or a random source it was not given; the caller passes ``now`` and
sleeps the delay it gets back.  :func:`retry` is the small async loop for
the common "try until it works" case.

Typical use, a connection kept up forever::

    backoff = Backoff(BackoffPolicy(s.reconnect_initial, s.reconnect_max))
    while True:
        backoff.started(clock())
        try:
            await session()          # returns or raises when the connection ends
        except OSError as exc:
            LOG.error("...: %s", exc)
        delay = backoff.failed(clock())   # reset first if the session lasted stable_after
        await asyncio.sleep(delay)

A stateless user (one retry count per queued item) calls
``policy.delay(failures, rng())`` directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Awaitable
from typing import Callable, Optional, TypeVar

__all__ = ["Backoff", "BackoffPolicy", "retry"]

T = TypeVar("T")


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")


@dataclasses.dataclass(frozen=True)
class BackoffPolicy:
    """How long to wait after the n-th failure in a row.

    ``initial``: the delay after the first failure (seconds, > 0).
    ``maximum``: no delay is ever longer (>= initial).
    ``jitter``: fraction in [0, 1]; each delay is drawn uniformly from
    ``base x (1 - jitter) .. base x (1 + jitter)`` and then capped at ``maximum``
    (0: exact delays).
    ``factor``: each failure multiplies the base delay by this (>= 1).
    ``stable_after``: an attempt that lasted at least this many seconds
    counts as a success for :meth:`Backoff.failed` (None: only
    :meth:`Backoff.reset` resets).
    """

    initial: float
    maximum: float
    jitter: float = 0.2
    factor: float = 2.0
    stable_after: Optional[float] = 60.0

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "jitter", "factor"):
            _positive(name, getattr(self, name))
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"initial={self.initial!r} must be positive and at most "
                             f"maximum={self.maximum!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter={self.jitter!r} must be within [0, 1]")
        if self.factor < 1:
            raise ValueError(f"factor={self.factor!r} must be at least 1")
        if self.stable_after is not None:
            _positive("stable_after", self.stable_after)
            if self.stable_after < 0:
                raise ValueError(f"stable_after={self.stable_after!r} must not be negative")

    def base(self, failures: int) -> float:
        """The delay without jitter after ``failures`` failures in a row (>= 1)."""
        if failures < 1:
            raise ValueError(f"failures={failures!r} must be at least 1")
        # Compare exponents, not powers: a long outage must not overflow a float.
        if (failures - 1) * math.log(self.factor) >= math.log(self.maximum / self.initial):
            return self.maximum
        return min(self.maximum, self.initial * self.factor ** (failures - 1))

    def delay(self, failures: int, rand: float) -> float:
        """The delay after ``failures`` failures in a row; ``rand`` is uniform in [0, 1).

        Within ``[base x (1 - jitter), min(base x (1 + jitter), maximum)]``.
        """
        if not 0 <= rand <= 1:
            raise ValueError(f"rand={rand!r} must be within [0, 1]")
        base = self.base(failures)
        return min(self.maximum, base * (1 + self.jitter * (2 * rand - 1)))


class Backoff:
    """The failures in a row of one thing that retries, and the next delay.

    Call :meth:`started` when an attempt begins, :meth:`failed` when it ends
    badly (or a long-lived connection ends at all) to get the delay before
    the next attempt, :meth:`reset` on evidence of health (a valid frame, a
    successful bind).  ``rng`` returns floats uniform in [0, 1).
    """

    def __init__(self, policy: BackoffPolicy, rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rng = rng
        self._failures = 0
        self._started: Optional[float] = None

    @property
    def failures(self) -> int:
        """Failures in a row since the last reset (0: the next failure waits ``initial``)."""
        return self._failures

    def started(self, now: float) -> None:
        """An attempt begins at ``now`` (monotonic seconds)."""
        self._started = now

    def reset(self) -> None:
        """It works: the next failure waits ``initial`` again."""
        self._failures = 0

    def failed(self, now: float) -> float:
        """The attempt ended badly at ``now``: count it and return the delay before the next.

        If the attempt began (:meth:`started`) at least ``stable_after``
        seconds ago, it counts as having worked: the count starts again.
        """
        stable = self.policy.stable_after
        if stable is not None and self._started is not None and now - self._started >= stable:
            self._failures = 0
        self._started = None
        self._failures += 1
        return self.policy.delay(self._failures, self._rng())


async def retry(
    attempt: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    retry_on: tuple[type[BaseException], ...],
    on_retry: Callable[[BaseException, float], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await ``attempt()`` until it returns, sleeping the backoff delay after each failure.

    Only exceptions in ``retry_on`` are retried (others propagate, as does
    cancellation); ``on_retry(exc, delay)`` is called before each sleep, for
    the caller's log line.  A success resets ``backoff``.
    """
    while True:
        backoff.started(clock())
        try:
            result = await attempt()
        except retry_on as exc:
            delay = backoff.failed(clock())
            on_retry(exc, delay)
            await sleep(delay)
        else:
            backoff.reset()
            return result
