"""The running relay: discovery, one channel per instance, the writer, the sender, control.

:class:`Relay` wires the pieces together under a small :class:`Supervisor`
(asyncio.TaskGroup needs Python 3.11; the relay supports 3.10): every part is
a named task, a part that crashes is logged and restarted with backoff, and
nothing one part does can stop the others.  ``run(shutdown)`` returns after
``shutdown`` is set and the relay has stopped in a fixed, logged order.

Instances live in one :class:`~host_relay.instances.InstanceTable`.  At start
the detectors' stored records are read back (host_relay.store) and each
detector is restored from its record when its instance's channel appears.
Every detector output goes through :meth:`Relay.carry_out`: rendered into
log lines (host_relay.render), and notifications plus records handed to the
:class:`~host_relay.store.StoreWriter`, which reports a notification, and
wakes the sender, only once it is on disk.

:func:`serve` is what ``iim-relay run`` calls: it composes the relay from the
configuration, installs the signal handlers and runs it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any, Callable, Optional

import iim_protocol
from host_relay import fallback, render, status
from host_relay.budget import DecodeBudget
from host_relay.channel import ChannelConnection
from host_relay.control import ControlServer
from host_relay.detector_outputs import GUEST_HANG, Notify
from host_relay.discovery import Discovery
from host_relay.domains import ORIGIN_SOCKET_DIR
from host_relay.instances import SOURCE_LIBVIRT, SOURCE_SOCKET_DIR, Instance, InstanceTable
from host_relay.maintenance import Maintenance
from host_relay.offloop import Worker
from host_relay.settings import RelaySettings
from host_relay.store import StoreWriter, restore_records
from host_relay.supervisor import Supervisor
from host_relay.transports import transport_for

LOG = logging.getLogger(__name__)

_MAX_REQUEUE = 1000  # entries per requeue request: one answer line stays small
_FORGET_DETECTOR_AFTER = 3600.0  # without a notification window in the detector config
_FORGET_EVERY = 60.0  # seconds between sweeps of instances gone long enough
_FLUSH_TIMEOUT = 5.0  # shutdown: pending writes get this long
#: A hang notification waits this long at most for its evidence (screenshot, console
#: tail, off the loop); then it is written without it and the evidence comes later.
EVIDENCE_WAIT = 3.0


class Relay:
    """The compute-host daemon's asyncio core."""

    def __init__(
        self,
        settings: RelaySettings,
        detector_config: Any,
        outbox: Any,
        sender: Any,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        *,
        detector_factory: Optional[Callable[..., Any]] = None,
        record_type: Any = None,
        writer: Optional[StoreWriter] = None,
        fallback_path: Optional[str] = None,
        notify: Optional[Callable[[str], Any]] = None,
        watchdog_interval: Optional[float] = None,
    ) -> None:
        from host_relay.detector import Detector, DetectorConfig, DetectorRecord

        if isinstance(detector_config, dict):
            detector_config = DetectorConfig(**detector_config)
        self.settings = settings
        self._detector_config = detector_config
        self._detector_factory = detector_factory or Detector
        self._record_type = record_type or DetectorRecord
        self.outbox = outbox
        self.sender = sender
        self._clock = clock
        self._wall_clock = wall_clock
        window = getattr(detector_config, "notification_window", None)
        self.instances = InstanceTable(float(window or _FORGET_DETECTOR_AFTER))
        self.writer = writer or StoreWriter(outbox, getattr(sender, "client", None),
                                            clock=clock, wall_clock=wall_clock,
                                            fallback_path=fallback_path)
        self._fallback_path = fallback_path
        if getattr(sender, "direct_results", False) is None:
            sender.direct_results = self.writer
        self._view = status.OutboxView(outbox.path, wall_clock)
        self._outputs = render.OutputHandler(self.writer, sender, settings.host, clock=clock,
                                             wall_clock=wall_clock)
        self._ops = Worker("outbox-ops")  # restore, requeue, close: never on the loop
        # One CPU budget for all channels' guest input, shared fairly (host_relay.budget).
        self.decode_budget = DecodeBudget(settings.channels.decode_budget, clock(),
                                          loop_cpu=time.thread_time)
        self._supervisor = Supervisor(clock)
        self._discovery: Optional[Discovery] = None
        self._libvirt: Any = None
        # The host's witnesses for silent instances (issue 12), with libvirt only.
        self.witnesses: Any = None  # host_relay.witness_service.Witnesses
        self._silence: Any = None  # host_relay.silence_watch.SilenceWatch
        self._evidence_tasks: set[asyncio.Task] = set()
        self.socket_dir_problem: Optional[str] = None
        self._control = ControlServer(settings.control_socket, self.handle_request)
        self._maintenance = Maintenance(  # pause/resume/status INSTANCE (host_relay.maintenance)
            self, self._detector_for, clock, wall_clock,
            getattr(detector_config, "max_pause", 0.0), outbox.path)
        self._sender_stop: Optional[asyncio.Event] = None
        self._started_at: Optional[float] = None
        self.stopping = False
        # Prometheus metrics, when [metrics] listen is set (see host_relay.metrics).
        self.metrics: Any = None
        if settings.metrics.address is not None:
            from host_relay.metrics import RelayMetrics

            self.metrics = RelayMetrics(settings.metrics.address)
            if getattr(sender, "on_delivered", False) is None:
                sender.on_delivered = self.metrics.observe_delivery
            self._outputs.observe_queued = self.metrics.observe_queued
        # systemd (host_relay.systemd): READY=1 once the outbox is open, the stored
        # records read and the channel directory scanned; WATCHDOG=1; STOPPING=1.
        self._notify = notify or (lambda state: False)
        self._watchdog_interval = watchdog_interval
        self.ready = asyncio.Event()

    @property
    def channels(self) -> dict[str, ChannelConnection]:
        """The open channel connections by instance uuid (a view of the table)."""
        return {i.uuid: i.conn for i in self.instances.connected()}

    # -- running ------------------------------------------------------------

    async def run(self, shutdown: asyncio.Event) -> None:
        """Run until ``shutdown`` is set, then stop in order."""
        s = self.settings
        self._started_at = self._clock()
        self._control.bind()  # fails now if another relay is running
        LOG.info("iim-relay %s starting on host %s (channels in %s, state in %s)",
                 iim_protocol.__version__, s.host, s.channels.socket_dir, s.state_path)
        sup = self._supervisor
        self._sender_stop = asyncio.Event()
        self._discovery = Discovery(s.channels.socket_dir, self._add_channel, self._remove_channel,
                                    self._on_scanned)
        try:
            await self._restore()
            if self._watchdog_interval:
                sup.spawn("watchdog", self._feed_watchdog)
            sup.spawn("writer", self.writer.run)
            sup.spawn("control", self._control.serve)
            sup.spawn("sender", lambda: self.sender.run(self._sender_stop))
            sup.spawn("discovery", self._discovery.run)
            sup.spawn("forget", self._forget_loop)
            if s.libvirt.enabled:
                self._start_libvirt()
            if self.metrics is not None:
                sup.spawn("metrics", lambda: self.metrics.serve(self))
            LOG.info("iim-relay running")
            await shutdown.wait()
        finally:
            await self._shutdown()

    async def _restore(self) -> None:
        """Read the detectors' stored records back (in a thread; a broken disk is logged).

        What the previous relay could not write (host_relay.fallback) is newer than
        the outbox: it is handed to the writer, and its records win.
        """
        pending, unwritten = await self._pending_from_last_run()
        try:
            records = await self._ops.call(restore_records, self.outbox, self._record_type,
                                           self._clock(), self._wall_clock())
        except Exception:  # noqa: BLE001 - the relay runs; detectors start fresh
            LOG.exception("Cannot read the detectors' stored state from %s; they start fresh",
                          self.outbox.path)
            records = {}
        shift = self._clock() - self._wall_clock()
        for uuid, data in unwritten.items():
            if data is None:
                records.pop(uuid, None)
                continue
            try:
                records[uuid] = self._record_type.from_json(data).shifted(shift)
            except (ValueError, TypeError, KeyError) as exc:
                LOG.error("Unwritten detector state of instance %s is unreadable (%s)", uuid,
                          exc)
        if pending or unwritten:
            self.writer.adopt(pending, unwritten, on_committed=lambda e: self.sender.wake())
        self.instances.restore(records, self._clock())
        if records:
            LOG.info("Restored the stored state of %d instances' detectors", len(records))

    async def _pending_from_last_run(self) -> tuple[list, dict]:
        if self._fallback_path is None:
            return [], {}
        try:
            entries, records = await self._ops.call(fallback.load, self._fallback_path)
        except (OSError, ValueError) as exc:
            LOG.error("Cannot read %s (writes a previous relay could not make): %s; left in "
                      "place for the operator", self._fallback_path, exc)
            return [], {}
        if entries or records:
            LOG.warning("The previous relay stopped before it could write %s to the outbox "
                        "(%s); writing them now", fallback.describe(entries, records),
                        self._fallback_path)
        return entries, records

    def _on_scanned(self) -> None:
        if self.ready.is_set():
            return  # discovery restarted after a crash: systemd knows already
        self.ready.set()
        self._notify(f"READY=1\nSTATUS=watching {len(self.channels)} instance channels in "
                     f"{self.settings.channels.socket_dir}")

    async def _feed_watchdog(self) -> None:
        assert self._watchdog_interval is not None
        while True:
            self._notify("WATCHDOG=1")
            await asyncio.sleep(self._watchdog_interval / 2)

    async def _forget_loop(self) -> None:
        while True:
            await asyncio.sleep(_FORGET_EVERY)
            self._forget(self._clock())

    def _forget(self, now: float) -> None:
        for inst in self.instances.expired(now):
            self.writer.forget(inst.uuid)
            if self.witnesses is not None:
                self.witnesses.forget(inst.uuid)

    async def _shutdown(self) -> None:
        self.stopping = True
        self._notify("STOPPING=1\nSTATUS=shutting down")
        grace = self.settings.shutdown_grace
        sup = self._supervisor
        LOG.info("Shutdown 1/6: stopping discovery")
        await sup.stop("discovery")
        await sup.stop("silence")
        await sup.stop("witnesses")
        if self._silence is not None:
            await self._silence.close()
        await self._release_held_outputs()
        await sup.stop("libvirt")
        await sup.stop("forget")
        channels = list(self.instances.connected())
        LOG.info("Shutdown 2/6: closing %d channels", len(channels))
        for inst in channels:
            inst.conn.close()
        await sup.stop_matching("channel ")
        for inst in channels:
            inst.conn = None
        LOG.info("Shutdown 3/6: writing %d pending notifications and records (up to %.0fs)",
                 self.writer.pending, _FLUSH_TIMEOUT)
        if self.writer.pending and not await self.writer.flush(_FLUSH_TIMEOUT):
            if await self.writer.keep_pending(_FLUSH_TIMEOUT):
                LOG.error("Shutdown: %d notifications and records could not be written to "
                          "%s; kept in %s for the next relay", self.writer.pending,
                          self.outbox.path, self._fallback_path)
            else:
                LOG.error("Shutdown: %d notifications and records could not be written to "
                          "%s; the guests' state after the restart brings them back",
                          self.writer.pending, self.outbox.path)
        await sup.stop("writer")
        LOG.info("Shutdown 4/6: stopping the sender (grace %.1fs)", grace)
        if self._sender_stop is not None:
            self._sender_stop.set()
        if not await sup.stop("sender", timeout=grace):
            LOG.warning("Sender did not finish within %.1fs; cancelled it", grace)
        LOG.info("Shutdown 5/6: closing the control socket")
        await sup.stop("control")
        await sup.stop("metrics")
        await sup.stop_all()
        LOG.info("Shutdown 6/6: closing the outbox")
        self.writer.close()
        self._view.close()
        self._maintenance.close()
        try:
            await asyncio.wait_for(self._ops.call(self.outbox.close), _FLUSH_TIMEOUT)
        except asyncio.TimeoutError:
            LOG.error("Closing the outbox %s did not finish within %.0fs (disk frozen?); "
                      "exiting without it", self.outbox.path, _FLUSH_TIMEOUT)
        except Exception:  # noqa: BLE001 - shutdown goes on; the rows are committed
            LOG.exception("Closing the outbox failed")
        self._ops.close()
        if self.witnesses is not None:
            self.witnesses.close()
        LOG.info("iim-relay stopped")

    def _start_libvirt(self) -> None:
        from host_relay import socket_dir
        from host_relay.libvirt_watch import DomainWatcher

        s = self.settings
        self.socket_dir_problem = socket_dir.prepare(
            s.channels.socket_dir, s.libvirt.socket_owner, s.libvirt.socket_group)
        self._libvirt = DomainWatcher(s.libvirt, s.channels.socket_dir, self, self._clock)
        if s.witnesses.enabled:
            self._start_witnesses()
        self._supervisor.spawn("libvirt", self._libvirt.run)

    def _start_witnesses(self) -> None:
        from host_relay.silence_watch import SilenceWatch
        from host_relay.witness_service import Witnesses

        s = self.settings
        self.witnesses = Witnesses(s.witnesses, os.path.join(s.state_path, "evidence"),
                                   clock=self._clock)
        self._silence = SilenceWatch(self, self.witnesses, clock=self._clock)
        self._libvirt.witnesses = self.witnesses  # attached on every (re)connect
        watcher = self._libvirt
        self._supervisor.spawn("witnesses",
                               lambda: self.witnesses.progress_loop(lambda: watcher.conn))
        self._supervisor.spawn("silence", self._silence.run)

    async def libvirt_domain(self, uuid: str) -> Any:
        """``uuid``'s libvirt domain handle (looked up off the loop), or None."""
        conn = self._libvirt.conn if self._libvirt is not None else None
        if conn is None or self.witnesses is None:
            return None
        try:
            return await self.witnesses.reader.run(conn.lookupByUUIDString, uuid)
        except Exception as exc:  # noqa: BLE001 - libvirtError: gone, or libvirtd trouble
            LOG.debug("Instance %s: no libvirt domain for the witnesses: %s", uuid, exc)
            return None

    # -- channels: claims from discovery and libvirt ------------------------

    def add_channel(self, uuid: str, path: str, origin: str) -> None:
        """libvirt says: read ``uuid``'s channel at ``path`` (hotplug | static | serial)."""
        self._apply(self.instances.claim(uuid, SOURCE_LIBVIRT, path, origin, self._clock()))

    def remove_channel(self, uuid: str) -> None:
        """libvirt says: ``uuid`` has no channel (any more)."""
        inst = self.instances.release(uuid, SOURCE_LIBVIRT, self._clock())
        if inst is not None:
            self._apply(inst)

    def domain_state(self, uuid: str, state: Any) -> None:
        """libvirt says: ``uuid``'s domain is in ``state`` (a detector DomainState)."""
        inst = self.instances.ensure(uuid, self._clock())
        inst.domain = state
        if inst.detector is not None and inst.conn is not None:
            inst.conn.domain_state(state)
        elif inst.detector is not None:
            self.carry_out(inst, inst.detector.domain_state(state, self._clock()))

    def _add_channel(self, uuid: str, path: str) -> None:
        self._apply(self.instances.claim(uuid, SOURCE_SOCKET_DIR, path, ORIGIN_SOCKET_DIR,
                                         self._clock()))

    def _remove_channel(self, uuid: str) -> None:
        inst = self.instances.release(uuid, SOURCE_SOCKET_DIR, self._clock())
        if inst is not None:
            self._apply(inst)

    def _apply(self, inst: Instance) -> None:
        want = inst.wanted()
        if want is None:
            self._close_channel(inst)
            return
        path, origin = want
        if inst.conn is not None and inst.conn.path == path:
            return  # the same socket seen by both: one connection
        self._open_channel(inst, path, origin)

    def _open_channel(self, inst: Instance, path: str, origin: str) -> None:
        if self.stopping:
            return
        old = inst.conn
        if old is not None:  # a new socket for the same instance replaces the old one
            old.close()
        now = self._clock()
        self._forget(now)
        conn = ChannelConnection(
            inst.uuid, path, self.settings.channels, self._detector_for(inst, now),
            lambda outputs, inst=inst: self.carry_out(inst, outputs),
            clock=self._clock, transport=transport_for(path, origin), budget=self.decode_budget,
            log_budget=inst.log_budget,
        )
        inst.conn = conn
        name = f"channel {inst.uuid}"
        if self._supervisor.running(name):
            asyncio.get_running_loop().create_task(self._restart(name, inst, conn))
        else:
            self._supervisor.spawn(name, conn.run)

    def _detector_for(self, inst: Instance, now: float) -> Any:
        if inst.detector is None:
            from host_relay.detector import DomainState

            inst.detector = self._detector_factory(
                self._detector_config, now, domain=inst.domain or DomainState.RUNNING,
                restored=inst.restored)
            if inst.restored is not None:
                LOG.info("Instance %s: detector restored from its stored state (%s)", inst.uuid,
                         inst.detector.state.value)
            inst.restored = None
            hold = self._silence.hold_reason() if self._silence is not None else ""
            if hold:  # the host-wide silence guard holds hangs now: this one's too
                self.carry_out(inst, inst.detector.host_hold(hold, now))
        return inst.detector

    async def _restart(self, name: str, inst: Instance, conn: ChannelConnection) -> None:
        await self._supervisor.stop(name)
        if inst.conn is conn and not self.stopping:
            self._supervisor.spawn(name, conn.run)

    def _close_channel(self, inst: Instance) -> None:
        conn, inst.conn = inst.conn, None
        if conn is None:
            return
        conn.close()
        asyncio.get_running_loop().create_task(self._supervisor.stop(f"channel {inst.uuid}"))

    # -- detector outputs ---------------------------------------------------

    def carry_out(self, inst: Instance, outputs: list) -> None:
        """Render a detector call's outputs; write its notifications with its record.

        A hang notification waits for its evidence (host_relay.witness_service:
        screenshot, console tail) at most EVIDENCE_WAIT; outputs that come
        meanwhile wait behind it, so records are written in order."""
        if inst.held_outputs is not None:
            inst.held_outputs.append(outputs)
            return
        if self.witnesses is not None and not self.stopping and any(
                isinstance(o, Notify) and o.kind == GUEST_HANG for o in outputs or ()):
            inst.held_outputs = [outputs]
            task = asyncio.get_running_loop().create_task(self._evidence_first(inst))
            self._evidence_tasks.add(task)
            task.add_done_callback(self._evidence_tasks.discard)
            return
        self._outputs(inst.uuid, inst.log_budget, outputs)

    def detector_call(self, inst: Instance, call: Callable[[float], list]) -> None:
        """``call(now)`` on the instance's detector; its outputs carried out, its timer set."""
        if inst.conn is not None:
            inst.conn.detector_call(call)
        else:
            self.carry_out(inst, call(self._clock()))

    async def _keep_evidence(self, uuid: str) -> Any:
        conn = self._libvirt.conn if self._libvirt is not None else None
        dom = await self.libvirt_domain(uuid)
        if conn is None or dom is None:
            return None
        return await self.witnesses.keep_evidence(conn, dom, uuid)

    async def _evidence_first(self, inst: Instance) -> None:
        extra = {"instance_uuid": inst.uuid}
        try:
            # The lookup and the evidence share one bound (the reader pool may be busy
            # with pings): the notification never waits longer than EVIDENCE_WAIT.
            keep = asyncio.ensure_future(self._keep_evidence(inst.uuid))
            try:
                evidence = await asyncio.wait_for(asyncio.shield(keep), EVIDENCE_WAIT)
            except asyncio.TimeoutError:
                LOG.warning("Instance %s: keeping the evidence takes over %.0fs; the hang is "
                            "notified without waiting for it", inst.uuid, EVIDENCE_WAIT,
                            extra=extra)
                return
            if evidence is None:
                LOG.warning("Instance %s: no evidence kept for the hang (libvirt has no domain "
                            "or no connection)", inst.uuid, extra=extra)
                return
            LOG.warning("Instance %s: evidence of the hang kept in %s (%s)%s", inst.uuid,
                        evidence.path, ", ".join(evidence.files) or "no files",
                        "; " + "; ".join(evidence.problems) if evidence.problems else "",
                        extra=extra)
        except Exception:  # noqa: BLE001 - evidence never stops the notification
            LOG.exception("Instance %s: keeping the evidence failed", inst.uuid, extra=extra)
        finally:
            self._write_held(inst)

    def _write_held(self, inst: Instance) -> None:
        held, inst.held_outputs = inst.held_outputs, None
        for outputs in held or ():
            self._outputs(inst.uuid, inst.log_budget, outputs)

    async def _release_held_outputs(self) -> None:
        """Shutdown: give evidence its bound, then write whatever still waits."""
        if self._evidence_tasks:
            await asyncio.wait(list(self._evidence_tasks), timeout=EVIDENCE_WAIT + 1.0)
        for inst in self.instances:
            if inst.held_outputs is not None:
                self._write_held(inst)

    # -- control requests -----------------------------------------------------

    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return status.to_json(await self.status())
        if cmd == "requeue":
            return await self._requeue(request)
        if cmd in ("pause", "resume", "instance"):
            m = self._maintenance
            return await {"pause": m.pause, "resume": m.resume, "instance": m.detail}[cmd](request)
        return {"error": f"unknown command {str(cmd)[:40]!r} "
                         "(known: status, requeue, pause, resume, instance)"}

    async def _requeue(self, request: dict[str, Any]) -> dict[str, Any]:
        """Queue dead letters again once the operator fixed the cause (host, maintenance)."""
        ids = request.get("ids")
        if request.get("all"):
            ids = [e.id for e in await self._ops.call(self.outbox.dead, _MAX_REQUEUE)]
        if (not isinstance(ids, list) or not ids or len(ids) > _MAX_REQUEUE
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            return {"error": f"requeue needs 'ids' (1 to {_MAX_REQUEUE} integers) or 'all'"}
        now = self._wall_clock()

        def requeue_all() -> list[int]:
            return [i for i in ids if self.outbox.requeue(i, now)]

        requeued = await self._ops.call(requeue_all)
        if requeued:
            LOG.warning("Re-queued dead-lettered notifications %s on operator request",
                        requeued)
            self.sender.wake()
        return {"requeued": requeued, "not_dead": [i for i in ids if i not in requeued]}

    # -- status -------------------------------------------------------------

    @property
    def restarts(self) -> dict[str, int]:
        """How often each part was restarted, by part name."""
        return dict(self._supervisor.restarts)

    def wall_time(self) -> float:
        return self._wall_clock()

    async def status(self) -> status.RelayStatus:
        """The whole relay as typed data; never waits for the disk longer than a second."""
        return await status.build(self)

    def libvirt_domains(self) -> dict[str, Any]:
        domains = self._safe(self._libvirt.snapshot) if self._libvirt is not None else {}
        return domains if isinstance(domains, dict) else {}

    def libvirt_status(self) -> dict[str, Any]:
        if self._libvirt is None:
            return {"uri": self.settings.libvirt.connection_uri, "enabled": False}
        state = self._safe(self._libvirt.connection_status)
        state.update(enabled=True, socket_dir_problem=self.socket_dir_problem)
        return state

    @property
    def started_at(self) -> Optional[float]:
        return self._started_at

    @property
    def view(self) -> status.OutboxView:
        return self._view

    @property
    def ignored_files(self) -> list[str]:
        return sorted(self._discovery.ignored) if self._discovery else []

    def now(self) -> float:
        return self._clock()

    @staticmethod
    def _safe(fn: Callable[[], Any]) -> Any:
        return status.safe(fn)


# -- composition: what `iim-relay run` calls ------------------------------------

def build(conf: Any, settings: RelaySettings, detector_config: Any) -> Relay:
    """The relay and its parts from the configuration (outbox opened, client made)."""
    from host_relay.conf.masakari import GROUP
    from host_relay.masakari_client import client_from_conf
    from host_relay.outbox_open import open_outbox
    from host_relay.sender import Sender
    from host_relay.systemd import notify, watchdog_interval

    # ConfigError (file, cause, fix) for what the operator must repair; a damaged
    # outbox is kept aside and what it still holds is carried over.
    outbox = open_outbox(settings.state_path, settings.outbox_path)
    d = settings.delivery
    client = client_from_conf(conf, GROUP, read_timeout=d.request_timeout)
    sender = Sender(outbox, client, backoff_initial=d.backoff_initial,
                    backoff_max=d.backoff_max, jitter=d.jitter)
    return Relay(settings, detector_config, outbox, sender, clock=time.monotonic,
                 wall_clock=time.time, notify=notify, watchdog_interval=watchdog_interval(),
                 fallback_path=fallback.path_in(fallback.runtime_dir_from_env()))


async def serve(conf: Any, settings: RelaySettings, detector_config: Any) -> None:
    """Run the relay until SIGTERM or SIGINT, then stop it in order."""
    relay = build(conf, settings, detector_config)
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        LOG.info("Received %s; shutting down", signal.Signals(sig).name)
        shutdown.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await relay.run(shutdown)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
