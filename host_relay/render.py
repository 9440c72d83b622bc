"""The detector's typed outputs, rendered into log lines; what must be written, picked out.

:func:`render` logs each output of one detector call (lazy ``%s`` logging,
``instance_uuid`` in every record) and returns the :class:`Notify` outputs
and the last :class:`Persist` record of that call, which the relay hands to
the writer together (host_relay.store).  The detector counts what it did
itself (``Detector.counters``, summed on /metrics), so nothing is counted
twice here.

Lines a guest can cause (suppressed failures, ignored input) are logged at
most once a minute per instance and kind; the rest at DEBUG.  An output type
this module does not know is logged at DEBUG and otherwise ignored.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from host_relay.detector import (
    AgentLost,
    HangHeld,
    Ignored,
    IncidentClosed,
    LateDeadline,
    Notify,
    PauseChanged,
    Persist,
    Started,
    Suppressed,
    Transitioned,
)

LOG = logging.getLogger(__name__)

GUEST_LINES_EVERY = 60.0  # seconds: guest-caused lines per instance and kind


def _limited(marks: dict[str, float], key: str, now: float) -> int:
    """INFO the first time per minute for ``key``, DEBUG otherwise."""
    if now - marks.get(key, float("-inf")) >= GUEST_LINES_EVERY:
        if len(marks) > 64:  # keys come from a fixed set; bound it anyway
            marks.clear()
        marks[key] = now
        return logging.INFO
    return logging.DEBUG


def render(uuid: str, outputs: Any, marks: dict[str, float],
           now: float) -> tuple[list[Notify], Optional[Any]]:
    """Log ``outputs``; return (notifications, last record to persist)."""
    notifies: list[Notify] = []
    record = None
    extra = {"instance_uuid": uuid}
    for out in outputs or ():
        if isinstance(out, Notify):
            notifies.append(out)
            LOG.warning("Instance %s: %s (%s); writing the notification to the outbox",
                        uuid, out.kind, out.reason, extra=extra)
        elif isinstance(out, Persist):
            record = out.record
        elif isinstance(out, Transitioned):
            LOG.info("Instance %s: detector %s -> %s (%s)", uuid, out.old.value,
                     out.new.value, out.why, extra=extra)
        elif isinstance(out, Suppressed):
            LOG.log(_limited(marks, f"suppressed:{out.why}", now),
                    "Instance %s: %s not notified: %s (%s)", uuid, out.kind, out.why,
                    out.reason, extra=extra)
        elif isinstance(out, Ignored):
            LOG.debug("Instance %s: ignored %s: %s", uuid, out.what, out.reason, extra=extra)
        elif isinstance(out, Started):
            LOG.log(_limited(marks, "started", now),
                    "Instance %s: agent %s (boot %s, start %s, version %s, interval %.1fs%s)",
                    uuid, "started" if out.start else "changed its interval", out.boot_id,
                    out.start_id or "-", out.agent_version, out.interval,
                    "" if out.interval == out.asked_interval
                    else f", asked {out.asked_interval:g}s", extra=extra)
        elif isinstance(out, PauseChanged):
            if out.until is None:
                LOG.info("Instance %s: %s pause over (%s)", uuid, out.origin, out.source,
                         extra=extra)
            else:
                LOG.log(logging.INFO if out.origin == "host"
                        else _limited(marks, "pause", now),
                        "Instance %s: paused by the %s for %.0fs (%s; from %s)%s", uuid,
                        out.origin, max(0.0, out.until - out.at), out.reason, out.source,
                        "" if out.asked is None else f", asked {out.asked:.0f}s", extra=extra)
        elif isinstance(out, AgentLost):
            LOG.log(logging.WARNING if out.first else logging.DEBUG,
                    "Instance %s: agent lost: silent for %.1fs but the guest answers %s (%s); "
                    "not a VM failure, no notification (hang detection held %.1fs unless "
                    "confirmed again)", uuid, max(0.0, out.at - out.since), out.by, out.detail,
                    max(0.0, out.hold_until - out.at), extra=extra)
        elif isinstance(out, HangHeld):
            LOG.warning("Instance %s: guest_hang (%s) held by the host-wide silence guard (%s); "
                        "released by its own witness or when the silence clears", uuid,
                        out.reason, out.why, extra=extra)
        elif isinstance(out, IncidentClosed):
            LOG.info("Instance %s: %s incident over: %s", uuid, out.kind, out.why, extra=extra)
        elif isinstance(out, LateDeadline):
            LOG.warning("Instance %s: hang deadline seen %.1fs late (the relay stalled); "
                        "re-checking in %.1fs instead of notifying", uuid, out.late,
                        max(0.0, out.recheck_at - out.at), extra=extra)
        else:
            LOG.debug("Instance %s: unknown detector output %r", uuid, out, extra=extra)
    return notifies, record


class OutputHandler:
    """Carries out one detector call's outputs: log them, write notify + record together.

    A notification is reported ("is in the outbox"), the sender woken and the
    decision-to-disk latency observed only in ``on_committed``, once the writer
    has it on disk.
    """

    def __init__(self, writer: Any, sender: Any, hostname: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 observe_queued: Optional[Callable[[Notify, float], None]] = None) -> None:
        self._writer = writer
        self._sender = sender
        self._hostname = hostname
        self._clock = clock
        self._wall = wall_clock
        self.observe_queued = observe_queued

    def __call__(self, uuid: str, marks: dict[str, float], outputs: Any) -> None:
        now = self._clock()
        notifies, record = render(uuid, outputs, marks, now)
        stored = None
        if record is not None:
            stored = record.shifted(self._wall() - now).to_json()  # stored on the wall clock
        for i, note in enumerate(notifies):
            last = i == len(notifies) - 1
            self._writer.submit(
                uuid, notify=note, hostname=self._hostname, record=stored if last else None,
                on_committed=lambda entry, note=note: self._queued(entry, note))
        if stored is not None and not notifies:
            self._writer.submit(uuid, record=stored)

    def _queued(self, entry: Any, note: Notify) -> None:
        LOG.warning("Instance %s: %s notification (%s) is in the outbox as entry %s (%s)",
                    entry.instance_uuid, entry.kind, entry.reason, entry.id, entry.state,
                    extra={"instance_uuid": entry.instance_uuid})
        if entry.state == "queued":
            self._sender.wake()
        if self.observe_queued is not None:
            self.observe_queued(note, self._clock() - note.at)
