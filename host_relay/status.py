"""The relay's status as typed data: one model for the control socket, the CLI and /metrics.

:meth:`host_relay.service.Relay.status` builds a :class:`RelayStatus`;
:func:`to_json` turns it into the control socket's JSON answer (what
``iim-relay status`` prints), and the metrics collector reads the same
object.  Nothing here touches the disk on the event loop: the outbox is read
by :class:`OutboxView` in its own thread, with a deadline, one read at a
time, so a frozen or failing disk makes status say so instead of hanging.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import os
import sqlite3
import time
from typing import Any, Callable, Optional

import iim_protocol
from host_relay.offloop import Worker
from host_relay.outbox import Entry, Outbox

LOG = logging.getLogger(__name__)

READ_DEADLINE = 1.0  # seconds status waits for the outbox before answering without it
DEAD_LETTERS_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class ChannelStatus:
    state: str
    state_age: float
    next_retry_in: Optional[float]
    path: str
    transport: str
    last_error: Optional[str]
    connects: int
    disconnects: int
    connect_failures: int
    errors: int
    syncs: int


@dataclasses.dataclass(frozen=True)
class InstanceStatus:
    uuid: str
    origin: Optional[str]
    channel: Optional[ChannelStatus]
    last_heartbeat_age: Optional[float]
    last_message_age: Optional[float]
    heartbeats: int
    detector: Any  # host_relay.detector.DetectorStatus, None before a channel was seen
    decoder: dict[str, Any]
    throttle: dict[str, Any]
    last_failure: Optional[dict[str, Any]]
    libvirt: Optional[dict[str, Any]]
    domain_state: Optional[str]
    problem: Optional[str] = None
    reason: Optional[str] = None
    fix: Optional[str] = None
    # Guest-caused log lines held back by the log budget, by kind (host_relay.log_budget).
    log_suppressed: dict[str, int] = dataclasses.field(default_factory=dict)
    # host_relay.witness_service.WitnessStatus: last evidence event, verdict, evidence kept
    witnesses: Any = None


@dataclasses.dataclass(frozen=True)
class OutboxStatus:
    depth: int
    oldest_queued_age: float
    dead: int
    delivered: int
    retrying: int
    read_age: float  # seconds since this was read from disk (0: fresh)
    error: Optional[str] = None  # why it could not be read fresh


@dataclasses.dataclass(frozen=True)
class OutboxReading:
    stats: dict[str, Any]
    dead_letters: list[Entry]
    latest: dict[str, Entry]  # newest entry per instance
    at: float  # wall clock of the read


@dataclasses.dataclass(frozen=True)
class RelayStatus:
    version: str
    host: str
    pid: int
    uptime: Optional[float]
    socket_dir: str
    instances: dict[str, InstanceStatus]
    libvirt: dict[str, Any]
    ignored_files: list[str]
    config_warnings: list[str]
    outbox: Optional[OutboxStatus]
    dead_letters: list[dict[str, Any]]
    sender: dict[str, Any]
    store: Any  # host_relay.store.WriterStatus
    restarts: dict[str, int]
    detectors: dict[str, dict[str, int]]  # counters summed over instances, by kind
    # host_relay.silence_guard.GuardStatus; None without witnesses (no libvirt, disabled)
    silence_guard: Any = None
    witnesses: dict[str, Any] = dataclasses.field(default_factory=dict)  # counters, stats


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_json(status: RelayStatus) -> dict[str, Any]:
    """The control socket's answer (JSON-able, enums as their values)."""
    out = _plain(status)
    for inst in out["instances"].values():
        det = inst.get("detector")
        if isinstance(det, dict):
            det["checks"] = dict(det.get("checks") or ())
    return out


def entry_dict(entry: Entry, wall: float) -> dict[str, Any]:
    out = dataclasses.asdict(entry)
    out["age"] = round(wall - entry.created_at, 3)
    return out


def _read(db: sqlite3.Connection, wall: float) -> OutboxReading:
    db.row_factory = sqlite3.Row
    db.execute("BEGIN")
    try:
        stats = Outbox.stats_from(db, wall)
        dead = [Outbox._entry(r) for r in db.execute(
            "SELECT * FROM outbox WHERE state = 'dead' ORDER BY id DESC LIMIT ?",
            (DEAD_LETTERS_SHOWN,))]
        latest = {r["instance_uuid"]: Outbox._entry(r) for r in db.execute(
            "SELECT * FROM outbox WHERE id IN (SELECT MAX(id) FROM outbox"
            " GROUP BY instance_uuid)")}
    finally:
        db.execute("COMMIT")
    return OutboxReading(stats, dead, latest, wall)


class OutboxView:
    """Reads the outbox for status in its own thread and connection; never blocks the loop."""

    def __init__(self, path: str, wall_clock: Any = time.time) -> None:
        self.path = path
        self._wall = wall_clock
        self._worker = Worker("outbox-reader")
        self._db: Optional[sqlite3.Connection] = None
        self._in_flight: Optional[asyncio.Future] = None
        self.last: Optional[OutboxReading] = None
        self.last_error: Optional[str] = None

    def _read_in_thread(self, wall: float) -> OutboxReading:
        if self._db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA query_only = 1")
            db.execute("PRAGMA busy_timeout = 500")
            self._db = db
        return _read(self._db, wall)

    async def read(self) -> tuple[Optional[OutboxReading], Optional[str]]:
        """(the newest reading, why it is not fresh or None); waits READ_DEADLINE at most."""
        if self._in_flight is None or self._in_flight.done():
            self._in_flight = self._worker.call(self._read_in_thread, self._wall())
        try:
            self.last = await asyncio.wait_for(asyncio.shield(self._in_flight), READ_DEADLINE)
            self.last_error = None
        except asyncio.TimeoutError:
            self.last_error = (f"the outbox {self.path} did not answer within "
                               f"{READ_DEADLINE:g}s (disk slow or frozen)")
        except Exception as exc:  # noqa: BLE001 - status still answers
            self.last_error = f"cannot read the outbox {self.path}: {type(exc).__name__}: {exc}"
        return self.last, self.last_error

    def close(self) -> None:
        self._worker.close()


def outbox_status(reading: Optional[OutboxReading], error: Optional[str],
                  wall: float) -> Optional[OutboxStatus]:
    if reading is None:
        return None if error is None else OutboxStatus(0, 0.0, 0, 0, 0, 0.0, error)
    s = reading.stats
    return OutboxStatus(s["depth"], s["oldest_queued_age"], s["dead"], s["delivered"],
                        s["retrying"], round(max(0.0, wall - reading.at), 3), error)


def safe(fn: Callable[[], Any]) -> Any:
    """``fn()``, or an error entry: status must always answer."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - status must always answer
        LOG.exception("Status: a part failed to report")
        return {"error": f"{type(exc).__name__}: {exc}"}


async def build(relay: Any) -> RelayStatus:
    """The relay's status (host_relay.service.Relay); the outbox read off the loop."""
    reading, error = await relay.view.read()
    now = relay.now()
    wall = relay.wall_time()
    domains = relay.libvirt_domains()
    latest = reading.latest if reading is not None else {}
    instances: dict[str, InstanceStatus] = {}
    totals: dict[str, collections.Counter] = {
        "notified": collections.Counter(), "suppressed": collections.Counter(),
        "ignored": collections.Counter(), "witness": collections.Counter()}
    witnesses = getattr(relay, "witnesses", None)
    for inst in sorted(relay.instances, key=lambda i: i.uuid):
        if inst.conn is None and inst.detector is None and inst.uuid not in domains:
            continue  # a stored record waiting for its instance
        instances[inst.uuid] = _instance(inst, now, wall, latest, domains.get(inst.uuid),
                                         witnesses)
        if inst.detector is not None:
            counters = inst.detector.counters
            for kind, counter in totals.items():
                counter.update(getattr(counters, kind))
    for uuid, domain in domains.items():  # known to libvirt, without a channel: say why
        if uuid not in instances and isinstance(domain, dict):
            instances[uuid] = _instance(_Bare(uuid), now, wall, latest, domain)
    sender = getattr(relay.sender, "counters", None)
    started = relay.started_at
    return RelayStatus(
        version=iim_protocol.__version__,
        host=relay.settings.host,
        pid=os.getpid(),
        uptime=None if started is None else round(now - started, 3),
        socket_dir=relay.settings.channels.socket_dir,
        instances=instances,
        libvirt=relay.libvirt_status(),
        ignored_files=relay.ignored_files,
        config_warnings=list(relay.settings.config_warnings),
        outbox=outbox_status(reading, error, wall),
        dead_letters=[entry_dict(e, wall) for e in (reading.dead_letters if reading else [])],
        sender=_plain(sender) if sender is not None else {},
        store=relay.writer.status(),
        restarts=relay.restarts,
        detectors={k: dict(v) for k, v in totals.items()},
        silence_guard=(_guard(witnesses, instances.values()) if witnesses is not None
                       else None),
        witnesses=({"counters": dict(witnesses.counters),
                    "bulk_stats": witnesses.stats_available} if witnesses is not None else {}),
    )


def _guard(witnesses: Any, instances: Any) -> Any:
    """The silence guard's status, with the hangs the detectors hold now (the guard
    decides when to hold; each detector holds its own)."""
    held = sum(1 for i in instances if getattr(i.detector, "hang_held", None))
    return dataclasses.replace(witnesses.guard.status(), held=held)


@dataclasses.dataclass
class _Bare:
    """A domain libvirt knows that has no instance record (no channel, no detector)."""

    uuid: str
    origin: Optional[str] = None
    conn: Any = None
    detector: Any = None
    log_budget: Any = None


def _instance(inst: Any, now: float, wall: float, latest: dict,
              domain: Optional[dict], witnesses: Any = None) -> InstanceStatus:
    conn = inst.conn
    det = safe(lambda: inst.detector.status(now)) if inst.detector is not None else None
    entry = latest.get(inst.uuid)
    domain = domain if isinstance(domain, dict) else None

    def age(t: Optional[float]) -> Optional[float]:
        return None if t is None else round(now - t, 3)

    channel = None
    if conn is not None:
        c = conn.counters
        channel = ChannelStatus(
            state=conn.state, state_age=round(now - conn.state_since, 3),
            next_retry_in=(None if conn.next_retry_at is None
                           else round(max(0.0, conn.next_retry_at - now), 3)),
            path=conn.path, transport=conn.transport, last_error=conn.last_error,
            connects=c["connects"], disconnects=c["disconnects"],
            connect_failures=c["connect_failures"], errors=c["errors"], syncs=c["syncs"])
    return InstanceStatus(
        uuid=inst.uuid,
        origin=inst.origin,
        channel=channel,
        last_heartbeat_age=age(conn.last_heartbeat_at) if conn else None,
        last_message_age=age(conn.last_message_at) if conn else None,
        heartbeats=conn.counters["heartbeats"] if conn else 0,
        detector=det,
        decoder=conn.decoder.stats.as_dict() if conn else {},
        throttle=conn.throttle_counts() if conn else {},
        last_failure=entry_dict(entry, wall) if entry is not None else None,
        libvirt=domain,
        domain_state=domain.get("state") if domain else None,
        problem=domain.get("problem") if domain else None,
        reason=domain.get("reason") if domain else None,
        fix=domain.get("fix") if domain else None,
        log_suppressed=dict(inst.log_budget.suppressed) if inst.log_budget else {},
        witnesses=safe(lambda: witnesses.status(inst.uuid)) if witnesses is not None else None,
    )
