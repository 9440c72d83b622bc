"""The detector's typed outputs, rendered into log lines; what must be written, picked out.

:func:`render` logs each output of one detector call (lazy ``%s`` logging,
``instance_uuid`` in every record) and returns the :class:`Notify` outputs
and the last :class:`Persist` record of that call, which the relay hands to
the writer together (host_relay.store).  The detector counts what it did
itself (``Detector.counters``, summed on /metrics), so nothing is counted
twice here.

Every line a guest can cause (transitions, suppressed failures, hellos,
pauses) goes through the instance's host_relay.log_budget.LogBudget: at most
once a minute per kind, then a count of what was held back.  A notification
is always logged (the detector's cooldown and storm cap bound those).  An
output type this module does not know is logged at DEBUG and otherwise ignored.
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
from host_relay.log_budget import LogBudget

LOG = logging.getLogger(__name__)

def render(uuid: str, outputs: Any, budget: LogBudget,
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
            budget.log(LOG, logging.INFO, f"transition:{out.old.value}:{out.new.value}", now,
                       "Instance %s: detector %s -> %s (%s)", uuid, out.old.value,
                       out.new.value, out.why, extra=extra)
        elif isinstance(out, Suppressed):
            budget.log(LOG, logging.INFO, f"suppressed:{out.why}", now,
                       "Instance %s: %s not notified: %s (%s)", uuid, out.kind, out.why,
                       out.reason, extra=extra)
        elif isinstance(out, Ignored):
            LOG.debug("Instance %s: ignored %s: %s", uuid, out.what, out.reason, extra=extra)
        elif isinstance(out, Started):
            budget.log(LOG, logging.INFO, "started", now,
                       "Instance %s: agent %s (boot %s, start %s, version %s, interval %.1fs%s)",
                       uuid, "started" if out.start else "changed its interval", out.boot_id,
                       out.start_id or "-", out.agent_version, out.interval,
                       "" if out.interval == out.asked_interval
                       else f", asked {out.asked_interval:g}s", extra=extra)
        elif isinstance(out, PauseChanged):
            if out.until is None:
                # The operator's own pause is logged always; a guest's is budgeted.
                if out.origin == "host":
                    LOG.info("Instance %s: %s pause over (%s)", uuid, out.origin, out.source,
                             extra=extra)
                else:
                    budget.log(LOG, logging.INFO, "pause_over", now,
                               "Instance %s: %s pause over (%s)", uuid, out.origin,
                               out.source, extra=extra)
            else:
                message = ("Instance %s: paused by the %s for %.0fs (%s; from %s)%s", uuid,
                           out.origin, max(0.0, out.until - out.at), out.reason, out.source,
                           "" if out.asked is None else f", asked {out.asked:.0f}s")
                if out.origin == "host":
                    LOG.info(*message, extra=extra)
                else:
                    budget.log(LOG, logging.INFO, "pause", now, *message, extra=extra)
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
            budget.log(LOG, logging.INFO, f"incident_over:{out.kind}", now,
                       "Instance %s: %s incident over: %s", uuid, out.kind, out.why, extra=extra)
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

    def __call__(self, uuid: str, budget: LogBudget, outputs: Any) -> None:
        now = self._clock()
        notifies, record = render(uuid, outputs, budget, now)
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
