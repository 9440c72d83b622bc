"""Durable decisions: the detectors' notifications and records, written off the loop.

Theory of operation
-------------------
A detector's :class:`Notify` and the ``Persist`` that comes with it are
handed to :meth:`StoreWriter.submit`, which returns at once.  Until the
writer thread has committed them (``Outbox.commit``: one sqlite transaction,
WAL, synchronous=FULL) they are *pending*: kept in memory, shown by
``status`` and on ``/metrics``, and only then reported ("queued ...") and
handed to the sender.  Records coalesce per instance (only the newest one is
written), so the pending set is bounded by the instances on the host plus
their notifications, which the detector's storm cap bounds.

A commit that fails (ENOSPC, EIO, EROFS, ...) is retried with backoff;
one ERROR line names the path, the error and the fix, and status and a metric
carry it until a commit succeeds again (then one line says so).  If the disk
stays broken (or frozen: a commit that has not returned) for ``direct_after``
seconds, each pending notification is sent straight to Masakari through the
same client the sender uses, so a broken disk never loses a failure.  The
outcome is kept with the pending notification and written with it once the
disk is back, as a delivered row: the sender never posts it again.  If the
row reached the disk as queued while the direct send was still under way
(a frozen disk that thawed), the sender asks :meth:`StoreWriter.direct_result`
before posting and uses that answer instead of a second POST.

Clocks: a detector record lives on the monotonic clock; it is stored on the
wall clock (``record.shifted(wall - mono)``) and restored with the opposite
shift, so relay downtime is measured and never guessed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Optional

from host_relay import fallback
from host_relay.disk import DiskProblem, classify_disk_error
from host_relay.masakari_client import Result
from host_relay.offloop import Worker
from host_relay.outbox import Entry, NewEntry, Outbox, _token
from host_relay.sender import Action, classify

LOG = logging.getLogger(__name__)

RETRY_INITIAL = 0.5
RETRY_MAX = 30.0
DIRECT_AFTER = 5.0  # disk broken or frozen this long: send pending notifications directly
DIRECT_RETRY_MAX = 60.0
IN_FLIGHT = object()  # direct_result(): a direct send is under way, do not post now

_FORGET = object()  # a record slot that means "delete the stored record"


@dataclasses.dataclass(frozen=True)
class WriterStatus:
    pending_notifications: int
    pending_records: int
    sent_directly: int  # since start: notifications sent before the disk took them
    commits: int
    commit_failures: int
    disk_problem: Optional[DiskProblem]


@dataclasses.dataclass
class _Pending:
    new: NewEntry
    decided_at: float  # monotonic time of the detector's decision (Notify.at)
    on_committed: Optional[Callable[[Entry], None]]
    direct_in_flight: bool = False
    direct_next: float = 0.0  # monotonic: earliest next direct attempt
    direct_attempts: int = 0


class StoreWriter:
    """The one writer of the outbox's notifications and detector records."""

    def __init__(
        self,
        outbox: Outbox,
        client: Any,  # post_notification(entry) -> Result, blocking (the sender's client)
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
        direct_after: float = DIRECT_AFTER,
        on_problem: Optional[Callable[[Optional[DiskProblem]], None]] = None,
        fallback_path: Optional[str] = None,
    ) -> None:
        self.outbox = outbox
        self._client = client
        self._clock = clock
        self._wall = wall_clock
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._direct_after = direct_after
        self._on_problem = on_problem
        self._worker = Worker("outbox-writer")
        # A copy of what is pending, on another file system, for the next relay if this
        # one is stopped before the disk is back (host_relay.fallback).
        self._fallback_path = fallback_path
        self._fallback_worker = Worker("outbox-fallback")
        self._fallback_saved = False
        self._saving: Optional[asyncio.Future] = None
        self._save_again = False
        self._gen = 0  # bumped whenever what is pending changes
        self._saved_gen = -1
        self._direct_worker = Worker("outbox-direct")
        self._notes: dict[str, _Pending] = {}  # by token, in submission order
        self._records: dict[str, Any] = {}  # uuid -> JSON dict | _FORGET
        # Outcomes of direct sends whose row may be on disk as queued: the sender asks.
        self._direct_done: dict[str, Result] = {}
        self._direct_in_flight: set[str] = set()  # tokens; may outlive their pending entry
        self._wake: Optional[asyncio.Event] = None
        self._problem: Optional[DiskProblem] = None
        self._problem_mono: Optional[float] = None
        self._commit_started: Optional[float] = None
        self.sent_directly = 0
        self.commits = 0
        self.commit_failures = 0

    # -- what the relay calls (on the loop) -------------------------------------

    def submit(self, instance_uuid: str, *, notify: Any = None, hostname: str = "",
               record: Optional[dict[str, Any]] = None,
               on_committed: Optional[Callable[[Entry], None]] = None) -> Optional[str]:
        """Queue a notification and/or a record (stored JSON, wall clock) for writing.

        Returns the notification's token (None without one).  Both go into the
        same transaction; ``on_committed(entry)`` runs on the loop once it is on disk.
        """
        token = None
        if notify is not None:
            token = _token()
            decided_wall = self._wall() - max(0.0, self._clock() - notify.at)
            self._notes[token] = _Pending(
                NewEntry(token, instance_uuid, hostname, notify.kind, notify.reason,
                         decided_wall),
                notify.at, on_committed)
        if record is not None:
            self._records[instance_uuid] = record
        self._gen += 1
        self._kick()
        return token

    def adopt(self, entries: list[NewEntry], records: dict[str, Optional[dict]],
              on_committed: Optional[Callable[[Entry], None]] = None) -> None:
        """Take over what a previous relay could not write (host_relay.fallback)."""
        now = self._clock()
        for new in entries:
            self._notes[new.token] = _Pending(new, now, on_committed)
        for uuid, record in records.items():
            self._records.setdefault(uuid, _FORGET if record is None else record)
        self._fallback_saved = bool(entries or records)
        self._gen += 1
        self._kick()

    def forget(self, instance_uuid: str) -> None:
        """Delete the instance's stored record (it has been gone long enough)."""
        self._records[instance_uuid] = _FORGET
        self._gen += 1
        self._kick()

    def direct_result(self, token: Optional[str]) -> Any:
        """For the sender: None, IN_FLIGHT, or the Result a direct send already got."""
        if token is None:
            return None
        if token in self._direct_in_flight:
            return IN_FLIGHT
        return self._direct_done.get(token)

    def settled(self, token: Optional[str]) -> None:
        """The sender recorded the direct send's outcome on the row."""
        if token is not None:
            self._direct_done.pop(token, None)

    def status(self) -> WriterStatus:
        problem = self._problem
        if problem is None and self._frozen_for() >= self._direct_after:
            problem = self._frozen_problem()
        return WriterStatus(
            pending_notifications=len(self._notes),
            pending_records=len(self._records),
            sent_directly=self.sent_directly,
            commits=self.commits,
            commit_failures=self.commit_failures,
            disk_problem=problem,
        )

    @property
    def pending(self) -> int:
        return len(self._notes) + len(self._records)

    # -- the writer task --------------------------------------------------------

    async def run(self, stop: Optional[asyncio.Event] = None) -> None:
        """Commit what is pending until cancelled (or ``stop`` is set and nothing is)."""
        self._wake = asyncio.Event()
        delay = self._retry_initial
        direct = asyncio.get_running_loop().create_task(self._direct_loop())
        try:
            while True:
                if not self._notes and not self._records:
                    if stop is not None and stop.is_set():
                        return
                    self._wake.clear()
                    await self._wait(None, stop)
                    continue
                done = await self._commit_once()
                if done is None:  # only notifications being sent directly: wait for them
                    self._wake.clear()
                    await self._wait(self._retry_initial, stop)
                elif done:
                    delay = self._retry_initial
                else:
                    await self._wait(delay, stop)
                    delay = min(delay * 2, self._retry_max)
        finally:
            direct.cancel()
            await asyncio.gather(direct, return_exceptions=True)

    async def flush(self, timeout: float) -> bool:
        """Commit what is pending now (shutdown); False if it could not within ``timeout``."""
        try:
            return bool(await asyncio.wait_for(self._commit_once(), timeout)) or not self.pending
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        self._worker.close()
        self._direct_worker.close()
        self._fallback_worker.close()

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _wait(self, timeout: Optional[float], stop: Optional[asyncio.Event]) -> None:
        assert self._wake is not None
        waiters = [asyncio.ensure_future(self._wake.wait())]
        if stop is not None:
            waiters.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _commit_once(self) -> Optional[bool]:
        """True: committed; False: failed; None: nothing could be written now."""
        notes = [p for p in self._notes.values() if not p.direct_in_flight]
        records = dict(self._records)
        if not notes and not records:
            return None
        entries = [self._entry_to_write(p) for p in notes]
        rows = {k: (None if v is _FORGET else v) for k, v in records.items()}
        self._commit_started = self._clock()
        try:
            written = await self._worker.call(self._commit, entries, rows, self._wall())
        except Exception as exc:  # noqa: BLE001 - sqlite/OS errors, or a bug: kept, retried
            self._failed(exc)
            return False
        finally:
            self._commit_started = None
        self.commits += 1
        for uuid, value in records.items():
            if self._records.get(uuid) is value:  # nothing newer arrived meanwhile
                del self._records[uuid]
        if self._problem is not None:
            LOG.warning("Outbox %s is writable again after %.0fs: %d notifications and %d "
                        "records written", self.outbox.path, self._wall() - self._problem.since,
                        len(entries), len(rows))
            self._set_problem(None)
        for entry in written:
            if entry.state != "queued":
                self._direct_done.pop(entry.token, None)  # its outcome is on the row
            pending = self._notes.pop(entry.token, None)
            if pending is not None and pending.on_committed is not None:
                try:
                    pending.on_committed(entry)
                except Exception:  # noqa: BLE001 - the entry is durable; observers are secondary
                    LOG.exception("Observer of outbox entry %s failed", entry.id)
        if self._fallback_saved and not self._notes and not self._records:
            self._fallback_saved = False  # all on disk now: the copy is not needed
            self._fallback_worker.call(fallback.clear, self._fallback_path)
        return True

    def _commit(self, entries: list[NewEntry], rows: dict, wall: float) -> list[Entry]:
        """In the writer thread: commit, or raise with the error classified (statvfs)."""
        try:
            return self.outbox.commit(entries, rows, wall)
        except Exception as exc:
            exc.iim_disk_error = classify_disk_error(exc, self.outbox.path)  # type: ignore
            raise

    def _entry_to_write(self, pending: _Pending) -> NewEntry:
        result = self._direct_done.get(pending.new.token)
        if result is None:
            return pending.new
        verdict = classify(result, pending.new.hostname)
        now = self._wall()
        if verdict.action is Action.DELIVERED:
            outcome = ("delivered", result.status, result.notification_uuid, "", now)
        else:  # DEAD (a RETRY outcome is never kept: see _send_directly)
            outcome = ("dead", result.status, None, verdict.message, now)
        return dataclasses.replace(pending.new, outcome=outcome)

    def _save_fallback(self, force: bool = False) -> Optional[asyncio.Future]:
        """Keep a copy of what is pending for the next relay (its own thread, one at a time).

        Saved when what is pending changed since the last copy; a request while a
        copy is being written is coalesced into one more copy after it.
        """
        if self._fallback_path is None or not (self._notes or self._records):
            return None
        if self._saving is not None and not self._saving.done():
            self._save_again = True
            return self._saving
        if not force and self._saved_gen == self._gen:
            return None
        entries = [self._entry_to_write(p) for p in self._notes.values()]
        rows = {k: (None if v is _FORGET else v) for k, v in self._records.items()}
        self._fallback_saved = True
        self._saved_gen = self._gen
        self._save_again = False
        self._saving = self._fallback_worker.call(fallback.save, self._fallback_path,
                                                  entries, rows)
        self._saving.add_done_callback(self._fallback_done)
        return self._saving

    async def keep_pending(self, timeout: float) -> bool:
        """Shutdown with writes still pending: wait until their copy is saved."""
        deadline = self._clock() + timeout
        while self._fallback_path is not None and (self._notes or self._records):
            saving = self._save_fallback()
            if saving is None:
                return True  # the copy on file is current
            try:
                await asyncio.wait_for(asyncio.shield(saving),
                                       max(0.0, deadline - self._clock()))
            except asyncio.TimeoutError:
                LOG.error("Keeping the pending writes in %s did not finish within %.0fs",
                          self._fallback_path, timeout)
                return False
            except Exception:  # noqa: BLE001 - logged by _fallback_done
                return False
        return False

    def _fallback_done(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            LOG.error("Cannot keep the pending writes in %s either: %s", self._fallback_path,
                      future.exception())
            self._saved_gen = -1  # try again next time
        if self._save_again:
            self._save_fallback(force=True)

    def _failed(self, exc: BaseException) -> None:
        self.commit_failures += 1
        self._save_fallback()
        kind, fix = getattr(exc, "iim_disk_error", None) or ("other", f"check {self.outbox.path}")
        error = f"{type(exc).__name__}: {exc}"
        if self._problem is None or self._problem.errno_name != kind:
            since = self._problem.since if self._problem else self._wall()
            self._set_problem(DiskProblem(self.outbox.path, error, kind, fix, since))
            LOG.error("Cannot write the outbox %s: %s (%s); %d notifications and %d records "
                      "are kept in memory and retried with backoff, and notifications are "
                      "sent straight to Masakari if this lasts %.0fs; fix: %s",
                      self.outbox.path, error, kind, len(self._notes), len(self._records),
                      self._direct_after, fix)
        else:
            LOG.debug("Outbox %s still not writable: %s", self.outbox.path, error)

    def _set_problem(self, problem: Optional[DiskProblem]) -> None:
        self._problem = problem
        self._problem_mono = None if problem is None else self._clock()
        if self._on_problem is not None:
            self._on_problem(problem)

    def _frozen_for(self) -> float:
        started = self._commit_started
        return 0.0 if started is None else max(0.0, self._clock() - started)

    def _frozen_problem(self) -> DiskProblem:
        where = os.path.dirname(self.outbox.path) or "."
        return DiskProblem(
            self.outbox.path, f"a commit has not returned for {self._frozen_for():.0f}s",
            "FROZEN", f"the file system holding {where} does not complete writes (frozen? "
            f"`fsfreeze --unfreeze` it, or check the disk)", self._wall() - self._frozen_for())

    # -- direct sends while the disk is broken ----------------------------------

    def _disk_down_for(self) -> float:
        failing = 0.0 if self._problem_mono is None else self._clock() - self._problem_mono
        return max(failing, self._frozen_for())

    async def _direct_loop(self) -> None:
        frozen_logged = False
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self._direct_after / 5)))
            down = self._disk_down_for()
            if self._problem is None and down >= self._direct_after and not frozen_logged:
                frozen_logged = True
                problem = self._frozen_problem()
                LOG.error("Cannot write the outbox %s: %s; pending notifications are sent "
                          "straight to Masakari; fix: %s", problem.path, problem.error,
                          problem.fix)
            elif down == 0.0:
                frozen_logged = False
            if down < self._direct_after:
                continue
            now = self._clock()
            for pending in list(self._notes.values()):
                if (pending.direct_in_flight or pending.new.token in self._direct_done
                        or now < pending.direct_next):
                    continue
                asyncio.get_running_loop().create_task(self._send_directly(pending))

    async def _send_directly(self, pending: _Pending) -> None:
        new = pending.new
        pending.direct_in_flight = True
        self._direct_in_flight.add(new.token)
        pending.direct_attempts += 1
        try:
            result = await self._direct_worker.call(self._client.post_notification, new)
        except Exception as exc:  # noqa: BLE001 - the client should not raise
            result = Result(None, "", None, f"{type(exc).__name__}: {exc}")
        finally:
            pending.direct_in_flight = False
            self._direct_in_flight.discard(new.token)
        verdict = classify(result, new.hostname)
        if verdict.action is Action.RETRY:
            delay = min(DIRECT_RETRY_MAX, self._retry_initial * 2 ** pending.direct_attempts)
            pending.direct_next = self._clock() + delay
            LOG.warning("Instance %s: %s notification could not be written nor sent straight "
                        "to Masakari (%s); kept in memory, next try in %.0fs",
                        new.instance_uuid, new.kind, verdict.message, delay)
            return
        self._direct_done[new.token] = result  # same loop step as the flag: no gap
        self.sent_directly += 1
        self._gen += 1
        self._save_fallback()
        LOG.warning("Instance %s: %s notification (%s) sent straight to Masakari while the "
                    "outbox cannot be written: %s%s; it is recorded as %s once the disk is back",
                    new.instance_uuid, new.kind, new.reason, result.status,
                    " duplicate" if verdict.duplicate else "",
                    "delivered" if verdict.delivered else "dead")
        self._kick()


def restore_records(outbox: Outbox, record_type: Any, mono_now: float,
                    wall_now: float) -> dict[str, Any]:
    """Every stored record, back on the monotonic clock; unreadable ones are logged."""
    out: dict[str, Any] = {}
    for uuid, data in outbox.records().items():
        try:
            out[uuid] = record_type.from_json(data).shifted(mono_now - wall_now)
        except (ValueError, TypeError, KeyError) as exc:
            LOG.error("Stored detector state of instance %s in %s is unreadable (%s); that "
                      "detector starts fresh", uuid, outbox.path, exc)
    return out
