"""Delivers the outbox to Masakari: one request in flight, oldest entry first.

:func:`classify` is the whole policy, a pure function of the API's answer:

=====================================  ==========================================
202                                    delivered
409 "... is duplicate."                delivered (Masakari already has it)
409 "... under maintenance."           dead-lettered: Masakari refuses it on
                                       purpose; retrying would only spin
400 (unknown host, schema error)       dead-lettered, with what to fix
5xx, 401/403/404, other 4xx/409,       retried with exponential backoff and
connection refused, timeouts           jitter, without limit: never dropped
=====================================  ==========================================

The :class:`Sender` task sleeps on an :class:`asyncio.Event` until the next
entry is due (``Outbox.next_due_at``) or :meth:`Sender.wake` is called after a
``put()``; it never polls.  A dead-lettered entry stays in the outbox
(``state = 'dead'``, listed in ``iim-relay status``) until an operator
re-queues it (``iim-relay requeue``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
import re
import time
from typing import Any, Callable, Optional

from host_relay.masakari_client import Result
from host_relay.outbox import Entry, Outbox

LOG = logging.getLogger(__name__)

_HOST_NOT_FOUND = re.compile(r"Host with name (?P<host>.+?) could not be found", re.I)


class Action(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


@dataclasses.dataclass(frozen=True)
class Verdict:
    action: Action
    duplicate: bool = False
    message: str = ""  # operator-facing: what happened and, for DEAD, what to fix

    @property
    def delivered(self) -> bool:
        return self.action is Action.DELIVERED


DELIVERED = Verdict(Action.DELIVERED)


def classify(result: Result, hostname: str = "") -> Verdict:
    """What to do with an entry given the API's answer (pure, no I/O)."""
    status = result.status
    text = result.error or result.body or ""
    lowered = text.lower()
    host = hostname or "(unknown)"
    if status == 202:
        return DELIVERED
    if status is None:
        return Verdict(Action.RETRY, message=f"no answer from masakari-api: {text}")
    if status == 409:
        if "duplicate" in lowered:
            return Verdict(
                Action.DELIVERED, duplicate=True,
                message="Masakari already has this notification (409 duplicate)",
            )
        if "maintenance" in lowered:
            return Verdict(
                Action.DEAD,
                message=(
                    f"host {host} is on maintenance in Masakari: it refuses notifications "
                    "from it; take it out of maintenance (`openstack segment host update "
                    "<segment> <host> --on_maintenance False`) if it should be protected, "
                    f"then `iim-relay requeue --all`. Masakari said: {text}"
                ),
            )
        return Verdict(Action.RETRY, message=f"409 conflict: {text}")
    if status == 400:
        match = _HOST_NOT_FOUND.search(text)
        if match:
            name = match.group("host")
            return Verdict(
                Action.DEAD,
                message=(
                    f"host {name} is not registered in any Masakari failover segment: add "
                    f"it with `openstack segment host create` or set [DEFAULT] host to the "
                    f"name Masakari knows this compute host by (then restart the relay), and "
                    f"`iim-relay requeue --all`. Masakari said: {text}"
                ),
            )
        return Verdict(
            Action.DEAD,
            message=(
                "masakari-api rejected the notification as invalid (400): this is a bug "
                f"in iim-relay, please report it with this message. Masakari said: {text}"
            ),
        )
    if status in (401, 403):
        return Verdict(
            Action.RETRY,
            message=(
                f"{status} from masakari-api: check the credentials and role in the "
                f"relay's keystone options (retrying). Masakari said: {text}"
            ),
        )
    if status == 404:
        return Verdict(
            Action.RETRY,
            message=(
                "404 from masakari-api: the endpoint looks wrong (check endpoint / "
                f"endpoint_override / the catalog's instance-ha entry; retrying): {text}"
            ),
        )
    return Verdict(Action.RETRY, message=f"{status} from masakari-api: {text}")


@dataclasses.dataclass
class Counters:
    delivered: int = 0  # includes duplicates
    duplicates: int = 0
    dead: int = 0
    retries: int = 0
    errors: int = 0  # outbox (sqlite) errors in the sender loop

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        client: Any,  # anything with post_notification(entry) -> Result (blocking)
        clock: Callable[[], float] = time.time,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        jitter: float = 0.2,
        rng: Optional[random.Random] = None,
        batch: int = 50,
        on_delivered: Optional[Callable[[Entry, float], None]] = None,
    ):
        self.outbox = outbox
        self.client = client
        self.clock = clock
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.batch = batch
        self.counters = Counters()
        # Called with (entry, seconds from put() to Masakari's answer) on every
        # delivery, duplicates included: the relay's metrics observe latency here.
        self.on_delivered = on_delivered
        self.last_verdict: Optional[Verdict] = None
        self._wake = asyncio.Event()
        self._failing = False  # the last attempt failed transiently (API down?)

    def wake(self) -> None:
        """Look at the outbox now (call after put(); safe from the event loop only)."""
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        """Delay before the next try after `attempts` failed tries (>= 1)."""
        base = min(self.backoff_max, self.backoff_initial * (2 ** max(0, attempts - 1)))
        spread = base * self.jitter
        return max(0.0, base + self.rng.uniform(-spread, spread))

    async def run(self, stop_event: asyncio.Event) -> None:
        LOG.info("masakari sender started (%s queued)", self.outbox.stats(self.clock())["depth"])
        while not stop_event.is_set():
            # Clear before looking: a wake() after the query below is not lost.
            self._wake.clear()
            try:
                due = self.outbox.due(self.clock(), self.batch)
                for entry in due:
                    if stop_event.is_set():
                        break
                    await self.send_one(entry)
                if due:
                    continue
                next_at = self.outbox.next_due_at()
            except Exception:
                # sqlite trouble (disk full, I/O error): log it and try again later;
                # entries stay where they were, so nothing is lost.
                self.counters.errors += 1
                LOG.exception("outbox error in the masakari sender; retrying in %s s",
                              self.backoff_max)
                next_at = self.clock() + self.backoff_max
            timeout = None if next_at is None else max(0.0, next_at - self.clock())
            await self._wait(stop_event, timeout)
        LOG.info("masakari sender stopped")

    async def _wait(self, stop_event: asyncio.Event, timeout: Optional[float]) -> None:
        waiters = [asyncio.ensure_future(self._wake.wait()),
                   asyncio.ensure_future(stop_event.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def send_one(self, entry: Entry) -> Verdict:
        try:
            result = await asyncio.to_thread(self.client.post_notification, entry)
        except Exception as exc:  # the client should not raise; never let it kill us
            result = Result(None, "", None, f"{type(exc).__name__}: {exc}")
        verdict = classify(result, entry.hostname)
        self.last_verdict = verdict
        now = self.clock()
        attempts = entry.attempts + 1
        if verdict.action is Action.DELIVERED:
            self.outbox.mark_delivered(entry.id, result.status, result.notification_uuid, now)
            self.counters.delivered += 1
            if verdict.duplicate:
                self.counters.duplicates += 1
            if self.on_delivered is not None:
                try:
                    self.on_delivered(entry, now - entry.created_at)
                except Exception:  # noqa: BLE001 - an observer never stops delivery
                    LOG.exception("on_delivered observer failed")
            LOG.info(
                "delivered failure of instance %s (%s) to masakari: %s%s, "
                "%.3f s after it was reported, attempt %s",
                entry.instance_uuid, entry.kind, result.status,
                " duplicate" if verdict.duplicate else
                f" notification {result.notification_uuid}",
                now - entry.created_at, attempts,
            )
            if self._failing:
                # The API answers again: try everything that was backing off now.
                self._failing = False
                moved = self.outbox.retry_now(now)
                if moved:
                    LOG.info("masakari-api reachable again: retrying %s queued now", moved)
        elif verdict.action is Action.DEAD:
            self.outbox.mark_dead(entry.id, result.status, verdict.message, now)
            self.counters.dead += 1
            LOG.error(
                "NOT delivered, dead-lettered: failure of instance %s (%s: %s) on host %s: %s",
                entry.instance_uuid, entry.kind, entry.reason, entry.hostname, verdict.message,
            )
        else:
            self._failing = True
            delay = self.backoff(attempts)
            next_at = now + delay
            self.outbox.mark_retry(entry.id, result.status, verdict.message, next_at)
            self.counters.retries += 1
            LOG.warning(
                "could not deliver failure of instance %s (attempt %s): %s; next try in "
                "%.1f s (%s queued, kept until delivered)",
                entry.instance_uuid, attempts, verdict.message, delay,
                self.outbox.stats(now)["depth"],
            )
        return verdict
