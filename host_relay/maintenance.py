"""The operator's side of one instance: host pause, resume, and its detailed status.

``iim-relay pause INSTANCE --for DURATION``, ``iim-relay resume INSTANCE`` and
``iim-relay status INSTANCE`` ask the running relay over its control socket
(``{"cmd": "pause" | "resume" | "instance", "instance": ...}``); this module
answers them on the relay's loop.  INSTANCE is an instance uuid, or the name
of its libvirt domain when the relay watches libvirt.

The pause is the detector's *host* pause (``Detector.host_pause``), apart from
the guest's own: a heartbeat saying "not paused" never ends it and this
resume never ends the guest's.  It is bounded by the same ``[detector]
max_pause``: a longer one is refused (not clamped), so the operator knows.
A pause counts as made once the detector's record holding it is on disk (the
outbox's sqlite file, as every record): the answer says whether it got there
within ``STORE_WAIT`` seconds; if not (a broken disk) it holds in memory and
the writer keeps retrying.

An answer the CLI must turn into an exit status other than 0 carries
``refused`` (a short code) and ``message``; ``control.request`` raises only
for ``error`` (the relay could not answer at all).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from typing import Any, Callable, Optional

from host_relay import status as status_model
from host_relay.offloop import Worker
from host_relay.outbox import Entry, Outbox

LOG = logging.getLogger(__name__)

STORE_WAIT = 5.0  # seconds an answer waits for the pause to be on disk
_STORE_POLL = 0.02
NOTIFICATIONS_SHOWN = 10
READ_DEADLINE = status_model.READ_DEADLINE
MAX_REASON_BYTES = 255
MAX_NAME_CHARS = 255

# Refusal codes, and the exit status the CLI gives each.
UNKNOWN_INSTANCE = "unknown_instance"
BAD_REQUEST = "bad_request"
TOO_LONG = "too_long"
EXIT_STATUS = {UNKNOWN_INSTANCE: 1, BAD_REQUEST: 2, TOO_LONG: 2}


@dataclasses.dataclass(frozen=True)
class InstanceDetail:
    """``iim-relay status INSTANCE``: the instance's status plus its notifications."""

    uuid: str
    name: Optional[str]  # the libvirt domain's name, when libvirt said
    instance: dict[str, Any]  # the InstanceStatus, as the control socket renders it
    notifications: list[dict[str, Any]]  # newest first: outbox entries with their answers
    notifications_error: Optional[str]  # why they could not be read (disk slow, broken)
    max_pause: float


def refused(code: str, message: str) -> dict[str, Any]:
    return {"refused": code, "message": message}


class Maintenance:
    """Answers the per-instance control commands; the relay composes it."""

    def __init__(
        self,
        relay: Any,  # host_relay.service.Relay: instances, status(), carry_out, writer
        detector_for: Callable[[Any, float], Any],
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        max_pause: float,
        outbox_path: str,
    ) -> None:
        self._relay = relay
        self._detector_for = detector_for
        self._clock = clock
        self._wall = wall_clock
        self.max_pause = float(max_pause)
        self._outbox_path = outbox_path
        self._reader = Worker("instance-reader")
        self._db: Optional[sqlite3.Connection] = None

    def close(self) -> None:
        self._reader.close()

    # -- finding the instance -------------------------------------------------

    async def _find(self, name: Any) -> tuple[Optional[str], Optional[str], Any]:
        """(uuid, domain name, relay status) for a uuid or libvirt domain name."""
        snap = await self._relay.status()
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            return None, None, snap
        for uuid, inst in snap.instances.items():
            dom_name = (inst.libvirt or {}).get("name")
            if name.lower() == uuid.lower() or (dom_name and name == dom_name):
                return uuid, dom_name, snap
        return None, None, snap

    def _unknown(self, name: Any, snap: Any) -> dict[str, Any]:
        known = len(snap.instances)
        return refused(UNKNOWN_INSTANCE,
                       f"no instance {str(name)[:80]!r} on this host: the relay knows "
                       f"{known} instance{'s' if known != 1 else ''} (by uuid, or by libvirt "
                       "domain name); `iim-relay status` lists them")

    # -- pause and resume ---------------------------------------------------------

    async def pause(self, request: dict[str, Any]) -> dict[str, Any]:
        seconds, reason = request.get("seconds"), request.get("reason", "")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not seconds > 0 or seconds != seconds:
            return refused(BAD_REQUEST, "the pause needs a duration of more than 0 seconds")
        if seconds > self.max_pause:
            return refused(TOO_LONG, f"{human(seconds)} is longer than [detector] max_pause "
                           f"= {human(self.max_pause)} ({self.max_pause:g}s); pause for at "
                           "most that, or raise max_pause in the relay's configuration")
        if not isinstance(reason, str) or not reason.isprintable() \
                or len(reason.encode("utf-8")) > MAX_REASON_BYTES:
            return refused(BAD_REQUEST, f"the reason must be one line of printable text of "
                           f"at most {MAX_REASON_BYTES} bytes")
        uuid, name, snap = await self._find(request.get("instance"))
        if uuid is None:
            return self._unknown(request.get("instance"), snap)
        inst = self._relay.instances.ensure(uuid, self._clock())
        self._apply(inst, lambda det, now: det.host_pause(float(seconds), reason, now))
        LOG.warning("Instance %s: paused by the operator for %s (%s); no notification for it "
                    "until then or `iim-relay resume`", uuid, human(seconds), reason or "-",
                    extra={"instance_uuid": uuid})
        return await self._answer(inst, name)

    async def resume(self, request: dict[str, Any]) -> dict[str, Any]:
        uuid, name, snap = await self._find(request.get("instance"))
        if uuid is None:
            return self._unknown(request.get("instance"), snap)
        inst = self._relay.instances.ensure(uuid, self._clock())
        was = inst.detector is not None and inst.detector.status(self._clock()).host_pause
        if inst.detector is not None:
            self._apply(inst, lambda det, now: det.host_resume(now))
        if was:
            LOG.warning("Instance %s: the operator's pause ended by `iim-relay resume`", uuid,
                        extra={"instance_uuid": uuid})
        answer = await self._answer(inst, name)
        answer["was_paused"] = bool(was)
        return answer

    def _apply(self, inst: Any, call: Callable[[Any, float], list]) -> None:
        """Run ``call(detector, now)`` where the detector's outputs and timer are handled."""
        det = self._detector_for(inst, self._clock())
        if inst.conn is not None:
            inst.conn.detector_call(lambda now: call(det, now))
        else:
            self._relay.carry_out(inst, call(det, self._clock()))

    async def _answer(self, inst: Any, name: Optional[str]) -> dict[str, Any]:
        stored = await self._stored(inst.uuid)
        now, wall = self._clock(), self._wall()
        st = inst.detector.status(now)
        problem = self._relay.writer.status().disk_problem
        return {
            "instance": inst.uuid, "name": name, "state": st.state.value,
            "host_pause": _pause_json(st.host_pause, wall),
            "guest_pause": _pause_json(st.pause, wall),
            "stored": stored,
            "store_problem": None if stored or problem is None
            else f"{problem.path}: {problem.error} (fix: {problem.fix})",
        }

    async def _stored(self, uuid: str) -> bool:
        """True once the instance's record is on disk (nothing of it pending)."""
        writer = self._relay.writer
        for _ in range(int(STORE_WAIT / _STORE_POLL) + 1):
            if not writer.record_pending(uuid):
                return True
            await asyncio.sleep(_STORE_POLL)
        return not writer.record_pending(uuid)

    # -- status INSTANCE -------------------------------------------------------------

    async def detail(self, request: dict[str, Any]) -> dict[str, Any]:
        uuid, name, snap = await self._find(request.get("instance"))
        if uuid is None:
            return self._unknown(request.get("instance"), snap)
        notes, error = await self._notifications(uuid)
        wall = self._wall()
        out = status_model.to_json(dataclasses.replace(snap, instances={
            uuid: snap.instances[uuid]}))["instances"][uuid]
        det = out.get("detector")
        if isinstance(det, dict):  # remaining seconds -> also a wall-clock end for people
            for key in ("pause", "host_pause"):
                if isinstance(det.get(key), dict):
                    det[key]["until"] = wall + det[key]["remaining"]
        return status_model._plain(InstanceDetail(
            uuid=uuid, name=name, instance=out, notifications=notes,
            notifications_error=error, max_pause=self.max_pause))

    async def _notifications(self, uuid: str) -> tuple[list[dict[str, Any]], Optional[str]]:
        wall = self._wall()
        try:
            entries = await asyncio.wait_for(
                asyncio.shield(self._reader.call(self._read, uuid)), READ_DEADLINE)
        except asyncio.TimeoutError:
            return [], (f"the outbox {self._outbox_path} did not answer within "
                        f"{READ_DEADLINE:g}s (disk slow or frozen)")
        except Exception as exc:  # noqa: BLE001 - status still answers
            return [], f"cannot read the outbox {self._outbox_path}: {type(exc).__name__}: {exc}"
        return [status_model.entry_dict(e, wall) for e in entries], None

    def _read(self, uuid: str) -> list[Entry]:
        """In the reader thread: the instance's newest outbox entries, newest first."""
        if self._db is None:
            db = sqlite3.connect(self._outbox_path, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA query_only = 1")
            db.execute("PRAGMA busy_timeout = 500")
            db.row_factory = sqlite3.Row
            self._db = db
        rows = self._db.execute(
            "SELECT * FROM outbox WHERE instance_uuid = ? ORDER BY id DESC LIMIT ?",
            (uuid, NOTIFICATIONS_SHOWN)).fetchall()
        return [Outbox._entry(r) for r in rows]


def _pause_json(p: Any, wall: float) -> Optional[dict[str, Any]]:
    if p is None:
        return None
    return {"remaining": round(p.remaining, 3), "reason": p.reason, "origin": p.origin,
            "until": wall + p.remaining}


def human(seconds: float) -> str:
    """A duration as the pause commands write it: ``45s``, ``0.5s``, ``1h30m``."""
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"
    total, parts = int(round(seconds)), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)
