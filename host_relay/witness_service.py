"""The witnesses' I/O shell: libvirt events in, bulk stats polled, pings and evidence off the loop.

One :class:`Witnesses` per relay.  It keeps, per instance, the last libvirt
event that is evidence by itself and the progress readings; the relay asks
it :meth:`Witnesses.judge` when an instance has been silent for
``confirmed_hang_after`` and :meth:`Witnesses.keep_evidence` before it
queues a hang.  It also holds the host-wide :class:`SilenceGuard`.

The libvirt connection is the relay's (``DomainWatcher``'s):
:meth:`Witnesses.attach` registers the event callbacks on it after every
(re)connect and :meth:`Witnesses.detach` removes them; :meth:`progress_loop`
reads bulk stats through whatever connection is current.  Every blocking
libvirt call runs on the :class:`WitnessReader` pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Optional

from host_relay.evidence import Evidence, EvidenceStore, collect
from host_relay.settings import WitnessSettings
from host_relay.silence_guard import SilenceGuard
from host_relay.witness_libvirt import WitnessReader
from host_relay.witnesses import (
    EventEvidence,
    ProgressTracker,
    Unknown,
    Verdict,
    combine,
    event_evidence,
)

LOG = logging.getLogger(__name__)

MIB = 1024 * 1024
EVENT_KEEP = 3600.0  # an evidence event older than this is forgotten


@dataclasses.dataclass(frozen=True)
class WitnessStatus:
    """One instance's witness state, for status and the log."""

    last_event: Optional[str]  # "panic: panicked" ...
    last_verdict: Optional[str]  # Verdict.describe()
    verdict_at: Optional[float]
    evidence: Optional[str]  # the directory last saved


@dataclasses.dataclass
class _Seen:
    event: Optional[EventEvidence] = None
    verdict: Optional[Verdict] = None
    verdict_at: Optional[float] = None
    evidence: Optional[str] = None


class Witnesses:
    def __init__(self, settings: WitnessSettings, evidence_root: str, *,
                 reader: Optional[WitnessReader] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.reader = reader or WitnessReader()
        self.clock = clock
        self.progress = ProgressTracker(settings.vcpu_stall)
        self.guard = SilenceGuard(settings.guard_min_instances, settings.guard_min_percent,
                                  settings.guard_window)
        self.store = EvidenceStore(evidence_root, settings.evidence_max_per_instance,
                                   settings.evidence_max_total_mb * MIB)
        self._seen: dict[str, _Seen] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self.stats_available: Optional[bool] = None  # None until the first bulk read
        self._callbacks: list[int] = []
        # Called on the loop with (uuid, EventEvidence) for each evidence event (the relay's
        # panic fast path, host_relay.silence_watch).
        self.on_event: Optional[Callable[[str, EventEvidence], None]] = None

    # -- libvirt events (called on the loop by libvirtaio) ------------------------------------

    def attach(self, conn: Any, libvirt: Any, *, lifecycle: bool = True) -> None:
        """Register the evidence events on ``conn`` (after every connect).

        ``lifecycle=False``: the caller already has libvirt's lifecycle callback on
        this connection (libvirt refuses a second one) and forwards it to
        :meth:`on_lifecycle`."""
        events = [
            (libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, self._on_watchdog),
            (libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, self._on_io_error),
        ]
        if lifecycle:
            events.insert(0, (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self.on_lifecycle))
        for event_id, handler in events:
            try:
                self._callbacks.append(conn.domainEventRegisterAny(None, event_id, handler, None))
            except libvirt.libvirtError as exc:  # an older libvirtd: live without it
                LOG.info("witnesses: libvirt event %d not available: %s", event_id, exc)

    def detach(self, conn: Any, libvirt: Any) -> None:
        for cb_id in self._callbacks:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(cb_id)
        self._callbacks.clear()

    def _record(self, dom: Any, evidence: Optional[EventEvidence]) -> None:
        if evidence is None:
            return
        uuid = dom.UUIDString()
        self._seen.setdefault(uuid, _Seen()).event = evidence
        self.counters[f"event:{evidence.by}"] += 1
        LOG.warning("instance %s: libvirt reports %s (%s)", uuid, evidence.by, evidence.detail)
        if self.on_event is not None:
            self.on_event(uuid, evidence)

    def on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        with _logged("a lifecycle event"):
            self._record(dom, event_evidence("lifecycle", self.clock(), event=event,
                                             detail=detail))

    def _on_watchdog(self, _conn: Any, dom: Any, action: int, _opaque: Any) -> None:
        with _logged("a watchdog event"):
            self._record(dom, event_evidence("watchdog", self.clock(), action=action))

    def _on_io_error(self, _conn: Any, dom: Any, _src: str, dev: str, action: int, reason: str,
                     _opaque: Any) -> None:
        with _logged("an I/O error event"):
            self._record(dom, event_evidence("io_error", self.clock(), action=action,
                                             reason=reason, device=dev))

    # -- progress ------------------------------------------------------------------------------

    async def read_progress(self, conn: Any) -> None:
        """One bulk stats read for every domain (off the loop)."""
        samples = await self.reader.progress(conn)
        if samples is None:
            if self.stats_available is not False:
                LOG.warning("witnesses: no bulk domain stats from libvirt; the progress "
                            "witness is off")
            self.stats_available = False
            return
        self.stats_available = True
        self.counters["progress_reads"] += 1
        self.progress.feed(samples, self.clock())

    async def progress_loop(self, current_conn: Callable[[], Any]) -> None:
        """Read bulk stats every ``progress_interval`` through the current connection."""
        while True:
            conn = current_conn()
            if conn is not None:
                try:
                    await self.read_progress(conn)
                except Exception:  # noqa: BLE001 - the loop must survive one bad read
                    LOG.exception("witnesses: reading bulk domain stats failed")
            await asyncio.sleep(self.settings.progress_interval)

    # -- the questions the relay asks ----------------------------------------------------------

    async def judge(self, uuid: str, dom: Optional[Any], silent_since: float) -> Verdict:
        """Every witness about one silent instance, combined; the ping runs off the loop."""
        if not self.settings.enabled:
            return Unknown("witnesses disabled")
        seen = self._seen.setdefault(uuid, _Seen())
        ping = None
        if dom is not None:
            ping = await self.reader.ping(dom, self.settings.agent_ping_timeout)
            self.counters[f"ping:{ping.outcome.value}"] += 1
        now = self.clock()
        verdict = combine(event=seen.event, ping=ping,
                          progress=self.progress.verdict(uuid, silent_since, now),
                          io_moved=self.progress.io_since(uuid, silent_since),
                          silent_since=silent_since)
        seen.verdict, seen.verdict_at = verdict, now
        self.counters[f"verdict:{type(verdict).__name__.lower()}"] += 1
        return verdict

    async def keep_evidence(self, conn: Any, dom: Any, uuid: str) -> Evidence:
        """Screenshot, console tail (and the NMI if configured), off the loop; never raises."""
        s = self.settings
        try:
            evidence = await self.reader.run(
                lambda: collect(self.store, conn, dom, uuid, console_lines=s.evidence_console_lines,
                                inject_nmi=s.inject_nmi_on_hang))
        except Exception as exc:  # noqa: BLE001 - evidence must never block a notification
            LOG.exception("instance %s: keeping evidence failed", uuid)
            evidence = Evidence(None, (), (f"evidence failed: {exc}",))
        self._seen.setdefault(uuid, _Seen()).evidence = evidence.path
        self.counters["evidence_saved" if evidence.path else "evidence_failed"] += 1
        return evidence

    def forget(self, uuid: str) -> None:
        """The instance is gone from this host."""
        self._seen.pop(uuid, None)
        self.progress.forget(uuid)
        self.guard.heard(uuid, self.clock())

    def prune_events(self) -> None:
        cutoff = self.clock() - EVENT_KEEP
        for seen in self._seen.values():
            if seen.event is not None and seen.event.at < cutoff:
                seen.event = None

    def status(self, uuid: str) -> WitnessStatus:
        seen = self._seen.get(uuid) or _Seen()
        event = f"{seen.event.by}: {seen.event.detail}" if seen.event else None
        return WitnessStatus(event, seen.verdict.describe() if seen.verdict else None,
                             seen.verdict_at, seen.evidence)

    def close(self) -> None:
        self.reader.close()


@contextlib.contextmanager
def _logged(what: str):
    try:
        yield
    except Exception:  # noqa: BLE001 - one bad event must not stop libvirt's loop
        LOG.exception("witnesses: handling %s failed", what)
