"""The running relay: discovery, one channel per instance, the sender, the control socket.

:class:`Relay` wires the pieces together under a small :class:`Supervisor`
(asyncio.TaskGroup needs Python 3.11; the relay supports 3.10): every part is
a named task, a part that crashes is logged and restarted with backoff, and
nothing one part does can stop the others.  ``run(shutdown)`` returns after
``shutdown`` is set and the relay has stopped in a fixed, logged order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any, Callable, Optional

import iim_protocol
from host_relay.channel import ChannelConnection
from host_relay.control import ControlServer
from host_relay.discovery import Discovery
from host_relay.domains import ORIGIN_SOCKET_DIR
from host_relay.settings import RelaySettings
from host_relay.transports import transport_for

LOG = logging.getLogger(__name__)

_RESTART_INITIAL = 1.0
_RESTART_MAX = 30.0
_RESTART_STABLE = 60.0  # a part that ran this long restarts from the initial delay
_MAX_REQUEUE = 1000  # entries per requeue request: one answer line stays small
_FORGET_DETECTOR_AFTER = 3600.0  # without a notification window in the detector config


class Supervisor:
    """Named tasks that are restarted with backoff when they crash or return."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tasks: dict[str, asyncio.Task] = {}
        self.restarts: dict[str, int] = {}
        self._stopping: set[asyncio.Task] = set()

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        if name in self._tasks:
            raise ValueError(f"{name} is already running")
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._keep(name, factory), name=name
        )

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        delay = _RESTART_INITIAL
        while True:
            started = self._clock()
            try:
                await factory()
                if asyncio.current_task() in self._stopping:
                    return  # it was asked to stop, and did
                LOG.error("%s stopped on its own; restarting it in %.1fs", name, delay)
            except Exception:  # noqa: BLE001 - the supervisor's job: log and restart
                if asyncio.current_task() in self._stopping:
                    LOG.exception("%s failed while stopping", name)
                    return
                LOG.exception("%s crashed; restarting it in %.1fs", name, delay)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self._clock() - started >= _RESTART_STABLE:
                delay = _RESTART_INITIAL
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX)

    def running(self, name: str) -> bool:
        return name in self._tasks

    async def stop(self, name: str, timeout: Optional[float] = None) -> bool:
        """Cancel ``name``, or first wait up to ``timeout`` for it to end by itself.

        Returns False if it had to be cancelled after waiting.
        """
        task = self._tasks.pop(name, None)
        if task is None:
            return True
        done = True
        self._stopping.add(task)
        try:
            if timeout is not None:
                finished, _ = await asyncio.wait({task}, timeout=timeout)
                done = bool(finished)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            self._stopping.discard(task)
        return done

    async def stop_matching(self, prefix: str) -> int:
        names = [n for n in self._tasks if n.startswith(prefix)]
        tasks = [self._tasks.pop(n) for n in names]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    async def stop_all(self) -> None:
        await self.stop_matching("")


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
        detector_factory: Optional[Callable[[str, Any, float], Any]] = None,
        notify: Optional[Callable[[str], Any]] = None,
        watchdog_interval: Optional[float] = None,
    ) -> None:
        if detector_factory is None:
            from host_relay.detector import Detector, DetectorConfig

            if isinstance(detector_config, dict):
                detector_config = DetectorConfig(**detector_config)
            detector_factory = Detector
        self.settings = settings
        self._detector_config = detector_config
        self._detector_factory = detector_factory
        self.outbox = outbox
        self.sender = sender
        self._clock = clock
        self._wall_clock = wall_clock
        self.channels: dict[str, ChannelConnection] = {}
        # Detectors outlive their channel: QEMU re-creates the socket when
        # Masakari restarts the instance, and the cooldown and restart-storm
        # history must survive that.  A detector whose socket has been gone for
        # a whole notification window is forgotten (bounded memory).
        self._detectors: dict[str, Any] = {}
        self._gone_since: dict[str, float] = {}
        window = (detector_config.get("notification_window")
                  if isinstance(detector_config, dict)
                  else getattr(detector_config, "notification_window", None))
        self._forget_after = float(window or _FORGET_DETECTOR_AFTER)
        self._supervisor = Supervisor(clock)
        self._discovery: Optional[Discovery] = None
        # Who says where each instance's channel is: "socket_dir" (discovery) and
        # "libvirt" (the DomainWatcher), each (path, origin).  One ChannelConnection
        # per instance; libvirt's claim wins.  Domain states come from libvirt only.
        self._claims: dict[str, dict[str, tuple[str, str]]] = {}
        self._origins: dict[str, str] = {}
        self._domain_states: dict[str, Any] = {}
        self._libvirt: Any = None
        self.socket_dir_problem: Optional[str] = None
        self._control = ControlServer(settings.control_socket, self.handle_request)
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
        # systemd (host_relay.systemd): READY=1 once the outbox is open and the
        # channel directory scanned, WATCHDOG=1 from this loop, STOPPING=1.
        self._notify = notify or (lambda state: False)
        self._watchdog_interval = watchdog_interval
        self.ready = asyncio.Event()

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
            if self._watchdog_interval:
                sup.spawn("watchdog", self._feed_watchdog)
            sup.spawn("control", self._control.serve)
            sup.spawn("sender", lambda: self.sender.run(self._sender_stop))
            sup.spawn("discovery", self._discovery.run)
            if s.libvirt.enabled:
                self._start_libvirt()
            if self.metrics is not None:
                sup.spawn("metrics", lambda: self.metrics.serve(self))
            LOG.info("iim-relay running")
            await shutdown.wait()
        finally:
            await self._shutdown()

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

    async def _shutdown(self) -> None:
        self.stopping = True
        self._notify("STOPPING=1\nSTATUS=shutting down")
        grace = self.settings.shutdown_grace
        sup = self._supervisor
        LOG.info("Shutdown 1/5: stopping discovery")
        await sup.stop("discovery")
        await sup.stop("libvirt")
        LOG.info("Shutdown 2/5: closing %d channels", len(self.channels))
        for conn in self.channels.values():
            conn.close()
        await sup.stop_matching("channel ")
        self.channels.clear()
        LOG.info("Shutdown 3/5: stopping the sender (grace %.1fs)", grace)
        if self._sender_stop is not None:
            self._sender_stop.set()
        if not await sup.stop("sender", timeout=grace):
            LOG.warning("Sender did not finish within %.1fs; cancelled it", grace)
        LOG.info("Shutdown 4/5: closing the control socket")
        await sup.stop("control")
        await sup.stop("metrics")
        await sup.stop_all()
        LOG.info("Shutdown 5/5: closing the outbox")
        try:
            self.outbox.close()
        except Exception:  # noqa: BLE001 - shutdown goes on; the rows are committed
            LOG.exception("Closing the outbox failed")
        LOG.info("iim-relay stopped")

    def _start_libvirt(self) -> None:
        from host_relay import socket_dir
        from host_relay.libvirt_watch import DomainWatcher

        s = self.settings
        self.socket_dir_problem = socket_dir.prepare(
            s.channels.socket_dir, s.libvirt.socket_owner, s.libvirt.socket_group)
        self._libvirt = DomainWatcher(s.libvirt, s.channels.socket_dir, self, self._clock)
        self._supervisor.spawn("libvirt", self._libvirt.run)

    # -- channels: claims from discovery and libvirt ------------------------

    def add_channel(self, uuid: str, path: str, origin: str) -> None:
        """libvirt says: read ``uuid``'s channel at ``path`` (hotplug | static | serial)."""
        self._claims.setdefault(uuid, {})["libvirt"] = (path, origin)
        self._apply_claims(uuid)

    def remove_channel(self, uuid: str) -> None:
        """libvirt says: ``uuid`` has no channel (any more)."""
        self._claims.get(uuid, {}).pop("libvirt", None)
        self._apply_claims(uuid)

    def domain_state(self, uuid: str, state: Any) -> None:
        """libvirt says: ``uuid``'s domain is in ``state`` (a detector DomainState)."""
        self._domain_states[uuid] = state
        conn = self.channels.get(uuid)
        if conn is not None:
            conn.domain_state(state)

    def _add_channel(self, uuid: str, path: str) -> None:
        self._claims.setdefault(uuid, {})["socket_dir"] = (path, ORIGIN_SOCKET_DIR)
        self._apply_claims(uuid)

    def _remove_channel(self, uuid: str) -> None:
        self._claims.get(uuid, {}).pop("socket_dir", None)
        self._apply_claims(uuid)

    def _apply_claims(self, uuid: str) -> None:
        claims = self._claims.get(uuid) or {}
        want = claims.get("libvirt") or claims.get("socket_dir")
        if not claims:
            self._claims.pop(uuid, None)
        if want is None:
            self._origins.pop(uuid, None)
            self._close_channel(uuid)
            return
        path, origin = want
        self._origins[uuid] = origin
        conn = self.channels.get(uuid)
        if conn is not None and conn.path == path:
            return  # the same socket seen by both: one connection
        self._open_channel(uuid, path, origin)

    def _open_channel(self, uuid: str, path: str, origin: str) -> None:
        if self.stopping:
            return
        old = self.channels.pop(uuid, None)
        if old is not None:  # a new socket for the same instance replaces the old one
            old.close()
        now = self._clock()
        conn = ChannelConnection(
            uuid, path, self.settings.channels, self._detector_for(uuid, now), self.outbox,
            self.sender,
            self.settings.host, clock=self._clock, wall_clock=self._wall_clock,
            on_queued=self.metrics.observe_queued if self.metrics is not None else None,
            transport=transport_for(path, origin),
        )
        self.channels[uuid] = conn
        if uuid in self._domain_states:
            conn.domain_state(self._domain_states[uuid])
        name = f"channel {uuid}"
        if self._supervisor.running(name):
            asyncio.get_running_loop().create_task(self._restart(name, conn))
        else:
            self._supervisor.spawn(name, conn.run)

    def _detector_for(self, uuid: str, now: float) -> Any:
        for gone_uuid, since in list(self._gone_since.items()):
            if now - since >= self._forget_after:
                del self._gone_since[gone_uuid]
                self._detectors.pop(gone_uuid, None)
                self._domain_states.pop(gone_uuid, None)
        self._gone_since.pop(uuid, None)
        detector = self._detectors.get(uuid)
        if detector is None:
            detector = self._detector_factory(uuid, self._detector_config, now)
            self._detectors[uuid] = detector
        return detector

    async def _restart(self, name: str, conn: ChannelConnection) -> None:
        await self._supervisor.stop(name)
        if self.channels.get(conn.instance_uuid) is conn and not self.stopping:
            self._supervisor.spawn(name, conn.run)

    def _close_channel(self, uuid: str) -> None:
        conn = self.channels.pop(uuid, None)
        if conn is None:
            return
        conn.close()
        self._gone_since[uuid] = self._clock()
        asyncio.get_running_loop().create_task(self._supervisor.stop(f"channel {uuid}"))

    # -- status -------------------------------------------------------------

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return self.snapshot()
        if cmd == "requeue":
            return self._requeue(request)
        return {"error": f"unknown command {str(cmd)[:40]!r} (known: status, requeue)"}

    def _requeue(self, request: dict[str, Any]) -> dict[str, Any]:
        """Queue dead letters again once the operator fixed the cause (host, maintenance)."""
        ids = request.get("ids")
        if request.get("all"):
            ids = [e.id for e in self.outbox.dead(_MAX_REQUEUE)]
        if (not isinstance(ids, list) or not ids or len(ids) > _MAX_REQUEUE
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            return {"error": f"requeue needs 'ids' (1 to {_MAX_REQUEUE} integers) or 'all'"}
        now = self._wall_clock()
        requeued = [i for i in ids if self.outbox.requeue(i, now)]
        if requeued:
            LOG.warning("Re-queued dead-lettered notifications %s on operator request",
                        requeued)
            self.sender.wake()
        return {"requeued": requeued, "not_dead": [i for i in ids if i not in requeued]}

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        wall = self._wall_clock()
        instances = {}
        domains = self._safe(self._libvirt.snapshot) if self._libvirt is not None else {}
        for uuid, conn in sorted(self.channels.items()):
            item = conn.snapshot()
            item["last_failure"] = self._last_failure(uuid, wall)
            item["origin"] = self._origins.get(uuid, ORIGIN_SOCKET_DIR)
            instances[uuid] = item
        for uuid, domain in domains.items():  # known to libvirt, without a channel: say why
            if uuid not in instances and isinstance(domain, dict):
                instances[uuid] = {"origin": None,
                                   "last_failure": self._last_failure(uuid, wall)}
        for uuid, item in instances.items():
            domain = domains.get(uuid) if isinstance(domains, dict) else None
            item["libvirt"] = domain
            # libvirt's verdict at the top, for channel-less domains too.
            item["domain_state"] = domain.get("state") if domain else None
            for key in ("problem", "reason", "fix"):
                item[key] = domain.get(key) if domain else None
        return {
            "version": iim_protocol.__version__,
            "host": self.settings.host,
            "pid": os.getpid(),
            "uptime": None if self._started_at is None else round(now - self._started_at, 3),
            "socket_dir": self.settings.channels.socket_dir,
            "instances": instances,
            "libvirt": self._libvirt_status(),
            "ignored_files": sorted(self._discovery.ignored) if self._discovery else [],
            "config_warnings": list(self.settings.config_warnings),
            "outbox": self._safe(lambda: self.outbox.stats(wall)),
            "dead_letters": self._safe(lambda: [self._entry_dict(e, wall)
                                                for e in self.outbox.dead(20)]),
            "sender": self._safe(self._sender_counters),
            "restarts": dict(self._supervisor.restarts),
        }

    @property
    def restarts(self) -> dict[str, int]:
        """How often each part was restarted, by part name."""
        return dict(self._supervisor.restarts)

    def wall_time(self) -> float:
        return self._wall_clock()

    def _libvirt_status(self) -> dict[str, Any]:
        if self._libvirt is None:
            return {"uri": self.settings.libvirt.connection_uri, "enabled": False}
        status = self._safe(self._libvirt.connection_status)
        status.update(enabled=True, socket_dir_problem=self.socket_dir_problem)
        return status

    def _last_failure(self, uuid: str, wall: float) -> Optional[dict[str, Any]]:
        entry = self._safe(lambda: self.outbox.latest_for(uuid))
        if entry is None or isinstance(entry, dict):
            return entry
        return self._entry_dict(entry, wall)

    @staticmethod
    def _entry_dict(entry: Any, wall: float) -> dict[str, Any]:
        out = dataclasses.asdict(entry) if dataclasses.is_dataclass(entry) else dict(vars(entry))
        out["age"] = round(wall - out.get("created_at", wall), 3)
        return out

    def _sender_counters(self) -> dict[str, Any]:
        counters = getattr(self.sender, "counters", None)
        if callable(counters):
            counters = counters()
        if counters is None:
            return {}
        if dataclasses.is_dataclass(counters):
            return dataclasses.asdict(counters)
        return dict(counters)

    @staticmethod
    def _safe(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - status must always answer
            LOG.exception("Status: a part failed to report")
            return {"error": f"{type(exc).__name__}: {exc}"}
