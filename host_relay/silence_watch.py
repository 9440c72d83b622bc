"""The relay's side of the witnesses: who is silent, when to ask, what the detector is told.

One :class:`SilenceWatch` per relay with libvirt (host_relay.service).  Its
loop looks at every instance's detector (``Detector.silence``: silent since,
interval, while hang detection runs) and its :class:`SilenceJudge` (kept on
the :class:`~host_relay.instances.Instance` record), and

- asks the witnesses (host_relay.witness_service.Witnesses.judge: a qemu-ga
  ping off the loop, libvirt events, bulk stats) when the judge says it is
  due, and feeds the decision to the detector (``Detector.witness``):
  a confirmed hang notifies naming the witness, an alive guest is
  "agent lost", no witness leaves the [detector] rule as it was;
- feeds the host-wide :class:`SilenceGuard` (armed and silent instances)
  and tells every detector when it engages or lets go (``Detector.host_hold``);
- passes a guest-panic event to the detector at once (the fast path: a
  panic is evidence by itself, whatever the silence).

It sleeps until the earliest ``SilenceJudge.next_ask`` (at most
``MAX_SLEEP``), so an instance is asked within that of its due time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from host_relay.detector import State
from host_relay.detector_inputs import WitnessEvent
from host_relay.witness_decision import SilenceJudge
from host_relay.witnesses import PANIC, EventEvidence

LOG = logging.getLogger(__name__)

MAX_SLEEP = 0.5  # seconds: the loop looks at least this often
MIN_SLEEP = 0.05
#: A guest notified as hung stays counted silent by the guard until it is heard again.
FAILED_STATES = frozenset({State.COOLDOWN, State.FAILED})
MAX_ASKING = 64  # judgements in flight at once (each holds a reader thread up to the ping timeout)


class SilenceWatch:
    def __init__(self, relay: Any, witnesses: Any, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.witnesses = witnesses
        self.settings = witnesses.settings
        self.clock = clock
        self._asking: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        witnesses.on_event = self.on_event

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            wake = self.sweep(self.clock())
            await asyncio.sleep(min(MAX_SLEEP, max(MIN_SLEEP, wake - self.clock())))

    def sweep(self, now: float) -> float:
        """One look at every instance; returns when to look again."""
        guard = self.witnesses.guard
        wake = now + MAX_SLEEP
        armed = 0
        changes: list = []
        for inst in self.relay.instances:
            det = inst.detector
            silence = det.silence(now) if det is not None and inst.conn is not None else None
            judge = inst.judge
            if silence is None:
                if judge is not None and judge.silent_since is not None:
                    judge.heard()
                if guard.is_silent(inst.uuid):
                    if det is not None and det.state in FAILED_STATES:
                        armed += 1  # notified (or storm-capped): still a silent guest
                    else:
                        changes += guard.heard(inst.uuid, now)  # heard, paused, stopped ...
                continue
            armed += 1
            since, interval = silence
            if judge is None:
                judge = inst.judge = SilenceJudge(self.settings)
            if judge.silent_since is not None and judge.silent_since != since:
                judge.heard()  # it spoke (or the timer started again) since the last look
            first_ask = since + max(self.settings.confirmed_hang_after, 2 * interval)
            if now >= first_ask:
                changes += guard.silent(inst.uuid, since, now)
            elif guard.is_silent(inst.uuid):
                changes += guard.heard(inst.uuid, now)
            if (judge.ask_due(since, interval, now) and inst.uuid not in self._asking
                    and len(self._asking) < MAX_ASKING):
                self._ask(inst, since)
            wake = min(wake, judge.next_ask(since, interval))
        changes += guard.set_armed(armed, now)
        self._guard_changed(changes, now)
        return wake

    # -- asking ---------------------------------------------------------------------------------

    def _ask(self, inst: Any, since: float) -> None:
        self._asking.add(inst.uuid)
        task = asyncio.get_running_loop().create_task(self._judge(inst, since))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _judge(self, inst: Any, since: float) -> None:
        try:
            dom = await self.relay.libvirt_domain(inst.uuid)
            verdict = await self.witnesses.judge(inst.uuid, dom, since)
            now = self.clock()
            det, judge = inst.detector, inst.judge
            silence = det.silence(now) if det is not None else None
            if judge is None or silence is None or silence[0] != since:
                return  # heard (or stopped, paused, closed) while the witnesses were asked
            decision = judge.verdict(verdict, now)
            s = self.settings
            ev = WitnessEvent(decision.by, getattr(verdict, "detail", "") or verdict.describe(),
                              s.agent_lost_timeout if s.notify_on_agent_lost else None)
            if decision.outcome.value == "no_witness" and decision.first:
                LOG.info("Instance %s: silent %.1fs; no witness could tell (%s): the "
                         "[detector] rule decides", inst.uuid, now - since, verdict.describe(),
                         extra={"instance_uuid": inst.uuid})
            self.relay.detector_call(inst, lambda t: det.witness(decision.outcome.value, ev, t))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one instance's judgement never stops the loop
            LOG.exception("Instance %s: asking the witnesses failed", inst.uuid)
        finally:
            self._asking.discard(inst.uuid)

    # -- events and the guard -------------------------------------------------------------------

    def on_event(self, uuid: str, evidence: EventEvidence) -> None:
        """A libvirt event that is evidence by itself (on the loop): a panic is decided now."""
        if evidence.by != PANIC:
            return  # a watchdog or I/O error counts once the instance is silent (judge)
        inst = self.relay.instances.get(uuid)
        if inst is None or inst.detector is None:
            return
        det = inst.detector
        ev = WitnessEvent(evidence.by, evidence.detail, stops_domain=True)
        self.relay.detector_call(inst, lambda t: det.witness("confirmed_hang", ev, t))

    def _guard_changed(self, changes: list, now: float) -> None:
        for change in changes:
            if change.engaged:
                LOG.error("Host-wide silence: %s; the cause is likely this host or the relay "
                          "(CPU starvation, a stuck libvirtd, a QEMU or kernel upgrade): hang "
                          "notifications are HELD until each instance's own witness confirms "
                          "it or the silence clears", change.why)
            else:
                LOG.warning("Host-wide silence over (%s): held hang notifications are "
                            "released", change.why)
            why = change.why if change.engaged else ""
            for inst in self.relay.instances:
                det = inst.detector
                if det is not None:
                    self.relay.detector_call(
                        inst, lambda t, det=det, why=why: det.host_hold(why, t))

    def hold_reason(self) -> str:
        """What a new detector must be told: the guard's hold, or ""."""
        return "host-wide silence" if self.witnesses.guard.engaged else ""

    def forget(self, uuid: str) -> None:
        self.witnesses.forget(uuid)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

