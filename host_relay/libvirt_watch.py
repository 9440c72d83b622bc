"""Follow the host's libvirt domains: hot-plug the iim channel, report domain states.

:class:`DomainWatcher` connects to libvirtd, subscribes to lifecycle, device
and migration events through libvirtaio (libvirt's event loop run inside the
relay's asyncio loop) and reconciles every domain at start-up and after each
reconnect.  For a running, opted-in domain it makes sure the live domain has
the ``org.openstack.iim.0`` channel, hot-plugging it (``VIR_DOMAIN_AFFECT_LIVE``
only: Nova owns the persistent XML) after checking the live XML, and tells its
sink (the Relay) where to read it: ``add_channel(uuid, path, origin)``,
``remove_channel(uuid)`` and ``domain_state(uuid, DomainState)``.  A domain
without a virtio-serial controller is reported once, with the fix; with
``serial_fallback`` the host end of a serial port is read instead.  What it
decides is in :mod:`host_relay.domains`.

Why libvirt is called inline, on the loop thread, and not through
``asyncio.to_thread``: libvirtaio implements libvirt's event loop with
``loop.add_reader``/``add_writer`` and tasks, and libvirt calls those hooks
from whichever thread is making an API call (the remote driver disables the
event-loop watch on its socket while a thread waits for its reply, and
re-enables it afterwards).  An API call from a worker thread would therefore
touch the asyncio loop from another thread, which asyncio does not allow.
The calls made here are short on a healthy libvirtd (XMLDesc and
attachDeviceFlags take milliseconds; each call slower than ``SLOW_CALL`` is
logged), they happen on domain events, not per heartbeat, and a stall of the
loop is what the detector's ``late_tolerance`` is for: a late hang deadline
is re-checked, not reported.  A libvirtd that stops answering is detected by
libvirt's keepalive (``KEEPALIVE_INTERVAL`` x ``KEEPALIVE_COUNT``) and the
watcher reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from typing import Any, Callable, Optional

from host_relay import domains, socket_dir
from host_relay.backoff import Backoff, BackoffPolicy
from host_relay.detector import DomainState
from host_relay.domains import DomainInfo, OptIn
from host_relay.settings import LibvirtSettings

LOG = logging.getLogger(__name__)

SLOW_CALL = 1.0  # seconds; a libvirt call this slow holds up every channel: log it
KEEPALIVE_INTERVAL = 5  # seconds between keepalive probes of libvirtd ...
KEEPALIVE_COUNT = 3  # ... and unanswered probes before the connection counts as dead
MAX_ATTACH_PER_START = 3  # hot-plugs per domain start: re-attach after a detach, never a loop
_STABLE = 60.0  # a connection that lasted this long resets the reconnect backoff

_impl: Any = None  # libvirtaio's implementation, registered once per process


def register_event_impl(loop: asyncio.AbstractEventLoop) -> Any:
    """Run libvirt's event loop in ``loop``; must happen before the first ``libvirt.open``.

    libvirt accepts one event loop implementation per process (a second
    registration raises "Event loop is already registered"), so it is
    registered once.  Each asyncio loop (each ``asyncio.run``, as in tests)
    re-targets it, which is safe once the connections of the previous loop
    are closed.
    """
    global _impl
    import libvirt
    import libvirtaio

    if _impl is None:
        # libvirt prints every error to stderr by default; they are raised and logged instead.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _impl = libvirtaio.getCurrentImpl() or libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    elif _impl.loop is not loop:
        if _impl.loop.is_running() and not _impl.loop.is_closed():
            raise RuntimeError("libvirt events are bound to another running asyncio loop")
        _impl.loop = loop
    return _impl


@dataclasses.dataclass
class _Domain:
    """What the watcher knows about one domain (status and retry bookkeeping)."""

    uuid: str
    name: str = ""
    nova: Optional[str] = None
    state: Optional[DomainState] = None
    start_id: Optional[int] = None  # libvirt's domain id: changes with every start
    origin: Optional[str] = None
    path: Optional[str] = None
    opted_in: Optional[bool] = None
    problem: Optional[str] = None
    reason: Optional[str] = None
    fix: Optional[str] = None
    last_error: Optional[str] = None
    attach_attempts: int = 0  # since the relay started
    attaches_this_start: int = 0
    attach_failed_start: Optional[int] = None  # the start id whose hot-plug failed
    hotplugged_path: Optional[str] = None
    reported: set[str] = dataclasses.field(default_factory=set)  # problems already logged

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nova": self.nova,
            "state": self.state.value if self.state else None,
            "origin": self.origin,
            "path": self.path,
            "opted_in": self.opted_in,
            "problem": self.problem,
            "reason": self.reason,
            "fix": self.fix,
            "last_error": self.last_error,
            "attach_attempts": self.attach_attempts,
        }


class DomainWatcher:
    """The relay's libvirt part; ``sink`` is the Relay (domain_state/add_channel/remove_channel)."""

    def __init__(self, settings: LibvirtSettings, socket_dir: str, sink: Any,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.socket_dir = socket_dir
        self.sink = sink
        self._clock = clock
        self._rng = rng  # reconnect jitter
        self._opt_in = OptIn.from_settings(settings)
        self.domains: dict[str, _Domain] = {}
        self.connected = False
        self.connects = 0
        self.last_error: Optional[str] = None
        self.next_retry_at: Optional[float] = None
        self.stale_removed: list[str] = []
        self._conn: Any = None
        self.witnesses: Any = None  # host_relay.witness_service.Witnesses, set by the relay
        self._pending: set[str] = set()
        self._wake: Optional[asyncio.Event] = None
        self._closed: Optional[asyncio.Future] = None

    # -- running ------------------------------------------------------------

    async def run(self) -> None:
        """Connect, reconcile, follow events, reconnect with backoff; returns only if cancelled."""
        loop = asyncio.get_running_loop()
        try:
            import libvirt
        except ImportError:
            self.last_error = "libvirt-python is not installed (install iim[libvirt])"
            LOG.error("[libvirt] connection_uri is set but %s; domains are not watched",
                      self.last_error)
            await loop.create_future()  # nothing to do until the relay stops
        register_event_impl(loop)
        s = self.settings
        backoff = Backoff(BackoffPolicy(s.reconnect_initial, s.reconnect_max, stable_after=_STABLE),
                          rng=self._rng)
        while True:
            backoff.started(self._clock())
            error = None
            try:
                await self._session(libvirt, loop)
                self.last_error = "libvirtd closed the connection"
            except libvirt.libvirtError as exc:
                error = f"{s.connection_uri}: {exc.get_error_message() or exc}"
            finally:
                self.connected = False
            delay = backoff.failed(self._clock())
            if error is not None:
                if error != self.last_error:
                    LOG.error("libvirt: %s; retrying in %.1fs", error, delay)
                self.last_error = error
            self.next_retry_at = self._clock() + delay
            await asyncio.sleep(delay)
            self.next_retry_at = None

    async def _session(self, libvirt: Any, loop: asyncio.AbstractEventLoop) -> None:
        conn = self._call("open", libvirt.open, self.settings.connection_uri)
        self._closed = closed = loop.create_future()
        self._wake = asyncio.Event()
        callbacks = []

        def on_close(_conn: Any, reason: int, _opaque: Any) -> None:
            if not closed.done():
                closed.set_result(reason)

        try:
            conn.registerCloseCallback(on_close, None)
            events = [
                (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._on_device),
                (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_device),
                (getattr(libvirt, "VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION", None),
                 self._on_migration_iteration),
                (getattr(libvirt, "VIR_DOMAIN_EVENT_ID_JOB_COMPLETED", None), self._on_job),
            ]
            for event_id, handler in events:
                if event_id is None:
                    continue
                try:
                    callbacks.append(conn.domainEventRegisterAny(None, event_id, handler, None))
                except libvirt.libvirtError as exc:  # an older libvirtd: live without it
                    LOG.info("libvirt: event %d not available: %s", event_id, exc)
            with contextlib.suppress(libvirt.libvirtError):  # the test driver has none
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            if self.witnesses is not None:
                # libvirt tracks one lifecycle callback per connection: ours forwards it.
                self.witnesses.attach(conn, libvirt, lifecycle=False)
            self._conn = conn
            self.connected = True
            self.connects += 1
            self.last_error = None
            LOG.info("libvirt: connected to %s", self.settings.connection_uri)
            self.reconcile_all()
            while not closed.done():
                if not self._pending:
                    waiter = loop.create_task(self._wake.wait())
                    await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                self._wake.clear()
                while self._pending and not closed.done():
                    self.reconcile(self._pending.pop())
                    await asyncio.sleep(0)  # let channels read between domains
            LOG.warning("libvirt: connection to %s lost (reason %s); reconnecting",
                        self.settings.connection_uri, closed.result())
        finally:
            self._conn = None
            if self.witnesses is not None:
                self.witnesses.detach(conn, libvirt)
            for cb_id in callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cb_id)
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            took = time.monotonic() - started
            if took >= SLOW_CALL:
                LOG.warning("libvirt: %s took %.1fs (every channel waited)", what, took)

    # -- events (called by libvirtaio on the loop thread) ---------------------

    def _schedule(self, uuid: str) -> None:
        self._pending.add(uuid)
        if self._wake is not None:
            self._wake.set()

    def _on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        if self.witnesses is not None:  # first: a panic is decided before the state changes
            self.witnesses.on_lifecycle(conn, dom, event, detail, opaque)
        try:
            uuid = dom.UUIDString()
            LOG.debug("libvirt: domain %s event %d detail %d", uuid, event, detail)
            state = domains.state_from_event(event, detail)
            entry = self._entry(uuid)
            if state is not None:
                self._set_state(entry, state)
            if event == domains.EVENT_STOPPED:
                entry.start_id = None
                self._release(entry)
            elif event == domains.EVENT_UNDEFINED and entry.state in (None, DomainState.SHUTOFF,
                                                                      DomainState.CRASHED):
                self.domains.pop(uuid, None)
            elif event in (domains.EVENT_STARTED, domains.EVENT_RESUMED):
                self._schedule(uuid)  # a start, a landed migration: make sure of the channel
        except Exception:  # noqa: BLE001 - one bad event must not stop libvirt's loop
            LOG.exception("libvirt: handling a lifecycle event failed")

    def _on_device(self, _conn: Any, dom: Any, alias: str, _opaque: Any) -> None:
        with self._logged("a device event"):
            self._schedule(dom.UUIDString())

    def _on_migration_iteration(self, _conn: Any, dom: Any, _iteration: int, _opaque: Any) -> None:
        with self._logged("a migration event"):  # the source side, while memory is copied
            self._set_state(self._entry(dom.UUIDString()), DomainState.MIGRATING)

    def _on_job(self, _conn: Any, dom: Any, _params: Any, _opaque: Any) -> None:
        with self._logged("a job event"):  # a failed migration leaves the domain running
            self._schedule(dom.UUIDString())

    @contextlib.contextmanager
    def _logged(self, what: str):
        try:
            yield
        except Exception:  # noqa: BLE001 - one bad event must not stop libvirt's loop
            LOG.exception("libvirt: handling %s failed", what)

    # -- reconciling ----------------------------------------------------------

    def reconcile_all(self) -> None:
        """Bring every domain in line: at start-up and after every reconnect."""
        conn = self._conn
        listed = self._call("listAllDomains", conn.listAllDomains, 0)
        active = set()
        for dom in listed:
            uuid = dom.UUIDString()
            with self._logged(f"domain {uuid}"):
                if self._reconcile_domain(uuid, dom):
                    active.add(uuid)
        for uuid in set(self.domains) - {d.UUIDString() for d in listed}:
            self._forget(uuid)
        self.stale_removed += socket_dir.sweep(self.socket_dir, active)

    def reconcile(self, uuid: str) -> None:
        import libvirt

        try:
            dom = self._call("lookupByUUIDString", self._conn.lookupByUUIDString, uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                self._forget(uuid)
                return
            raise
        with self._logged(f"domain {uuid}"):
            self._reconcile_domain(uuid, dom)

    def _reconcile_domain(self, uuid: str, dom: Any) -> bool:
        """Make sure of one domain's state and channel; True if it is active."""
        import libvirt

        entry = self._entry(uuid)
        state, reason = self._call("state", dom.state)
        self._set_state(entry, domains.state_from_libvirt(state, reason))
        if not domains.is_active_state(state):
            entry.start_id = None
            self._release(entry)
            return False
        start_id = dom.ID()
        if start_id != entry.start_id:
            entry.start_id, entry.attaches_this_start, entry.hotplugged_path = start_id, 0, None
        info = domains.parse_domain(self._call("XMLDesc", dom.XMLDesc, 0))
        entry.name = info.name
        entry.nova = info.nova_label if info.nova_name is not None else None
        opted_in, why = self._opt_in.decide(info)
        entry.opted_in = opted_in
        if not opted_in:
            self._set_problem(entry, domains.NOT_OPTED_IN, why, None)
            self._release(entry)
            return True
        if info.channel_path:
            origin = self._origin_of(dom, info, libvirt)
            self._claim(entry, info.channel_path, origin)
            return True
        if info.channel_other:
            self._set_problem(entry, domains.ATTACH_FAILED,
                              f"the domain has an {domains.CHANNEL_NAME} channel the relay cannot "
                              f"read ({info.channel_other})",
                              "make it <channel type='unix'> with <source mode='bind'>")
        elif info.has_virtio_serial:
            if entry.state is DomainState.MIGRATING:
                # Incoming: libvirt refuses device changes until the migration ends; the
                # RESUMED event that ends it brings the domain back here.  (The source's
                # live XML carries a hot-plugged channel along, so usually it is there.)
                entry.reason = "waiting for the incoming migration to finish"
                return True
            if self._attach(entry, dom, libvirt):
                return True
        else:
            self._set_problem(entry, domains.NO_CONTROLLER,
                              "no virtio-serial controller: the channel cannot be hot-plugged",
                              domains.FIX_NO_CONTROLLER)
        if self.settings.serial_fallback:
            self._serial_fallback(entry, info)
        else:
            self._release(entry)
        return True

    def _origin_of(self, dom: Any, info: DomainInfo, libvirt: Any) -> str:
        """static if the persistent definition has the channel too, else hotplug."""
        entry = self.domains[info.uuid]
        if entry.hotplugged_path == info.channel_path:
            return domains.ORIGIN_HOTPLUG
        if dom.isPersistent():
            inactive = domains.parse_domain(self._call(
                "XMLDesc", dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE))
            return domains.ORIGIN_STATIC if inactive.channel_path else domains.ORIGIN_HOTPLUG
        # Transient: libvirt's own path (what the relay hot-plugs), or socket_dir's
        # <uuid>.sock (what relays before 0.1 hot-plugged), else someone else's.
        ours = domains.socket_path(self.socket_dir, info.uuid)
        hotplugged = (domains.is_libvirt_channel_path(info.channel_path)
                      or info.channel_path == ours)
        return domains.ORIGIN_HOTPLUG if hotplugged else domains.ORIGIN_STATIC

    def _attach(self, entry: _Domain, dom: Any, libvirt: Any) -> bool:
        """Hot-plug the channel once per failed start; True if it is there now.

        The channel has no path: libvirt creates the socket in its channel
        target directory, with its own ownership and security labels, and the
        live XML read back afterwards says where.
        """
        if entry.attach_failed_start == entry.start_id or (
                entry.attaches_this_start >= MAX_ATTACH_PER_START):
            return False  # reported already; a new start (or a relay restart) tries again
        entry.attach_attempts += 1
        entry.attaches_this_start += 1
        try:
            self._call("attachDeviceFlags", dom.attachDeviceFlags, domains.channel_xml(),
                       libvirt.VIR_DOMAIN_AFFECT_LIVE)
            path = domains.parse_domain(self._call("XMLDesc", dom.XMLDesc, 0)).channel_path
        except libvirt.libvirtError as exc:
            message = exc.get_error_message() or str(exc)
            entry.attach_failed_start = entry.start_id
            entry.last_error = f"{message} (code {exc.get_error_code()})"
            # The test driver fails here with VIR_ERR_NO_SUPPORT (code 3): it cannot
            # hot-plug; status says so and the next try waits for the domain's next start.
            self._set_problem(entry, domains.ATTACH_FAILED,
                              f"hot-plugging the channel failed: {message}",
                              domains.attach_hint(message), once_per_start=True)
            return False
        if not path:
            entry.attach_failed_start = entry.start_id
            entry.last_error = "no socket path in the live XML after the attach"
            self._set_problem(entry, domains.ATTACH_FAILED,
                              "libvirt attached the channel but its live XML names no socket",
                              "see the libvirtd log for the domain", once_per_start=True)
            return False
        LOG.info("Domain %s (%s): hot-plugged the iim channel; libvirt put its socket at %s",
                 entry.uuid, entry.name, path)
        entry.hotplugged_path = path
        entry.attach_failed_start = None
        self._claim(entry, path, domains.ORIGIN_HOTPLUG)
        return True

    def _serial_fallback(self, entry: _Domain, info: DomainInfo) -> None:
        port = self.settings.serial_port
        serial = info.serial(port)
        endpoint = serial.endpoint if serial is not None else None
        if endpoint is not None:
            self._claim(entry, endpoint, domains.ORIGIN_SERIAL, keep_problem=True)
            return
        if serial is None:
            why = (f"no serial port {port} either (stock Nova creates ttyS1 only with "
                   "[serial_console] enabled = true and hw_serial_port_count=2)")
        else:
            why = f"serial port {port} is type {serial.kind}, which the relay cannot read"
        entry.reason = f"{entry.reason}; {why}" if entry.reason and why not in entry.reason else (
            entry.reason or why)
        self._release(entry)

    # -- bookkeeping -----------------------------------------------------------

    def _entry(self, uuid: str) -> _Domain:
        entry = self.domains.get(uuid)
        if entry is None:
            entry = self.domains[uuid] = _Domain(uuid)
        return entry

    def _set_state(self, entry: _Domain, state: DomainState) -> None:
        if state is entry.state:
            return
        entry.state = state
        self._sink("domain_state", entry.uuid, state)

    def _set_problem(self, entry: _Domain, code: str, reason: str, fix: Optional[str],
                     once_per_start: bool = False) -> None:
        entry.problem, entry.reason, entry.fix = code, reason, fix
        key = f"{code}@{entry.start_id}" if once_per_start else code
        if key in entry.reported:
            return
        entry.reported.add(key)
        level = logging.INFO if code == domains.NOT_OPTED_IN else logging.WARNING
        LOG.log(level, "Domain %s (%s): %s%s", entry.uuid, entry.name, reason,
                f"; fix: {fix}" if fix else "")

    def _claim(self, entry: _Domain, path: str, origin: str, keep_problem: bool = False) -> None:
        if not keep_problem:
            entry.problem = entry.reason = entry.fix = None
        if (entry.origin, entry.path) == (origin, path):
            return
        entry.origin, entry.path = origin, path
        LOG.info("Domain %s (%s): channel %s (%s)", entry.uuid, entry.name, path, origin)
        self._sink("add_channel", entry.uuid, path, origin)

    def _release(self, entry: _Domain) -> None:
        if entry.origin is None:
            return
        entry.origin = entry.path = None
        self._sink("remove_channel", entry.uuid)

    def _forget(self, uuid: str) -> None:
        entry = self.domains.pop(uuid, None)
        if entry is not None:
            self._release(entry)

    def _sink(self, method: str, *args: Any) -> None:
        try:
            getattr(self.sink, method)(*args)
        except Exception:  # noqa: BLE001 - the relay logs; watching goes on
            LOG.exception("Relay failed in %s%r", method, args)

    # -- status ----------------------------------------------------------------

    @property
    def conn(self) -> Any:
        """The current libvirt connection, None between connections."""
        return self._conn

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per domain UUID: name, state, origin, path, problem/reason/fix, attach attempts."""
        return {uuid: entry.as_dict() for uuid, entry in sorted(self.domains.items())}

    def connection_status(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "uri": self.settings.connection_uri,
            "connected": self.connected,
            "connects": self.connects,
            "last_error": self.last_error,
            "next_retry_in": (None if self.next_retry_at is None
                              else round(max(0.0, self.next_retry_at - now), 3)),
            "stale_sockets_removed": list(self.stale_removed[-10:]),
        }
