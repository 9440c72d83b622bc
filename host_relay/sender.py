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
``put()``; it never polls.  Its outbox calls run in its own thread
(host_relay.offloop), so a slow or frozen disk holds delivery back but never
the event loop.  Before posting an entry it asks the writer
(``direct_results``, host_relay.store) whether that notification was already
sent straight to Masakari while the disk was broken: then it records that
answer instead of posting a second time.  A dead-lettered entry stays in the outbox
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
import sqlite3
import time
from typing import Any, Callable, Optional

from host_relay.masakari_client import Result
from host_relay.offloop import Worker
from host_relay.outbox import Entry, Outbox

LOG = logging.getLogger(__name__)

_DEFERRED_RECHECK = 0.5  # seconds: an entry held back while the writer sends it directly
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
        direct_results: Any = None,  # host_relay.store.StoreWriter, or None
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
        self.direct_results = direct_results
        self._worker = Worker("outbox-sender")
        self._db_error: Optional[str] = None  # the outbox failed; logged once per run
        # Masakari's answers not yet recorded on their row (the disk failed): recorded
        # on the next try instead of posting the entry a second time.
        self._answered: dict[int, Result] = {}
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

    def _db(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        return self._worker.call(fn, *args)

    async def run(self, stop_event: asyncio.Event) -> None:
        try:
            await self._run(stop_event)
        finally:
            self._worker.close()

    async def _run(self, stop_event: asyncio.Event) -> None:
        LOG.info("masakari sender started")
        while not stop_event.is_set():
            # Clear before looking: a wake() after the query below is not lost.
            self._wake.clear()
            try:
                due = await self._db(self.outbox.due, self.clock(), self.batch)
                deferred = False
                for entry in due:
                    if stop_event.is_set():
                        break
                    if await self.send_one(entry) is None:
                        deferred = True
                if due and not deferred:
                    continue
                next_at = await self._db(self.outbox.next_due_at)
                if deferred:  # a direct send is under way: look again shortly
                    next_at = self.clock() + _DEFERRED_RECHECK
            except Exception as exc:  # noqa: BLE001 - sqlite trouble (disk full, I/O error)
                # Entries stay where they were, so nothing is lost; an answer Masakari
                # gave is kept in memory until it is recorded (see send_one).
                self.counters.errors += 1
                if self._db_error is None:
                    LOG.error("masakari sender cannot use the outbox %s: %s: %s; retrying "
                              "every %s s (the writer's status says what to fix)",
                              self.outbox.path, type(exc).__name__, exc, self.backoff_max,
                              exc_info=not isinstance(exc, (sqlite3.Error, OSError)))
                else:
                    LOG.debug("masakari sender: outbox still failing: %s", exc)
                self._db_error = f"{type(exc).__name__}: {exc}"
                next_at = self.clock() + self.backoff_max
            else:
                if self._db_error is not None:
                    LOG.info("masakari sender can use the outbox again")
                    self._db_error = None
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

    async def send_one(self, entry: Entry) -> Optional[Verdict]:
        """Post ``entry`` and record the outcome; None when it must wait (see below)."""
        known = None
        if self.direct_results is not None:
            known = self.direct_results.direct_result(entry.token)
            if known is not None and not isinstance(known, Result):
                return None  # being sent straight to Masakari right now: never twice
        if entry.id in self._answered:
            result = self._answered[entry.id]  # answered before; only the record failed
        elif isinstance(known, Result):
            result = known  # sent while the disk was broken: record, do not post again
            LOG.info("failure of instance %s (%s) was sent straight to Masakari while the "
                     "outbox could not be written; recording that answer", entry.instance_uuid,
                     entry.kind)
        else:
            try:
                result = await asyncio.to_thread(self.client.post_notification, entry)
            except Exception as exc:  # the client should not raise; never let it kill us
                result = Result(None, "", None, f"{type(exc).__name__}: {exc}")
        self._answered[entry.id] = result
        verdict = await self._record(entry, result)
        self._answered.pop(entry.id, None)
        if isinstance(known, Result):
            self.direct_results.settled(entry.token)
        return verdict

    async def _record(self, entry: Entry, result: Result) -> Verdict:
        verdict = classify(result, entry.hostname)
        now = self.clock()
        attempts = entry.attempts + 1
        if verdict.action is Action.DELIVERED:
            await self._db(self.outbox.mark_delivered, entry.id, result.status,
                           result.notification_uuid, now)
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
                moved = await self._db(self.outbox.retry_now, now)
                if moved:
                    LOG.info("masakari-api reachable again: retrying %s queued now", moved)
        elif verdict.action is Action.DEAD:
            await self._db(self.outbox.mark_dead, entry.id, result.status, verdict.message, now)
            self.counters.dead += 1
            LOG.error(
                "NOT delivered, dead-lettered: failure of instance %s (%s: %s) on host %s: %s",
                entry.instance_uuid, entry.kind, entry.reason, entry.hostname, verdict.message,
            )
        else:
            self._failing = True
            delay = self.backoff(attempts)
            next_at = now + delay
            await self._db(self.outbox.mark_retry, entry.id, result.status, verdict.message,
                           next_at)
            self.counters.retries += 1
            LOG.warning(
                "could not deliver failure of instance %s (attempt %s): %s; next try in "
                "%.1f s (kept until delivered)",
                entry.instance_uuid, attempts, verdict.message, delay,
            )
        return verdict
