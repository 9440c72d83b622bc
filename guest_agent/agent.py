"""The agent: one poll loop over pidfds, the port, the control socket and signals.

Everything waits in :meth:`Agent.run`'s single ``poll()`` whose timeout is
the nearest timer (heartbeat, rescan, grace expiry, port retry, pause expiry,
control client timeout).  Signals wake it through ``signal.set_wakeup_fd``:
SIGTERM and SIGINT send ``goodbye`` and stop; SIGHUP reloads the config.

What goes to the host: ``hello`` first whenever the host (re)connects,
then the active pause, a heartbeat and a ``failure`` for every failed check;
``failure``/``recovered`` as checks change; a heartbeat every interval and
``hello`` again every :data:`HELLO_EVERY` heartbeats.  Every hello and
heartbeat carries the whole state (interval, boot id, this process's
``start_id``, the pause in force), so a relay that missed a frame, or started
late, learns everything from the next one; the same ``start_id`` tells the
relay that a periodic hello is a repeat, not a start.  A ``sync`` from the host
is answered with hello, heartbeat and the failures (see
:mod:`guest_agent.resync`); a ``pause`` frame follows every hello while paused,
for a 0.1.0 relay, on which a hello ends the pause.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from typing import Any, Callable, Optional

from guest_agent.checks import FAILED, OK, Transition
from guest_agent.config import AgentConfig, ConfigError, load_config
from guest_agent.control import ControlServer
from guest_agent.monitor import Monitor
from guest_agent.port import Port
from guest_agent.processes import PsutilSource
from guest_agent.reactor import POLLIN, Reactor
from guest_agent.resync import SyncAnswers
from guest_agent.watcher import PidWatcher
from iim_protocol import __version__
from iim_protocol.messages import (
    MAX_PAUSE_SECONDS,
    MAX_SEQ,
    MAX_TEXT_BYTES,
    PROTOCOL_VERSION,
    Failure,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    Pause,
    PauseState,
    Recovered,
    Resume,
)

LOG = logging.getLogger(__name__)

HELLO_EVERY = 30  # heartbeats: a host that missed hello arms within half a minute
GOODBYE_FLUSH_SECONDS = 1.0  # how long stopping waits for goodbye to leave
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def read_boot_id() -> str:
    try:
        with open(BOOT_ID_PATH, encoding="ascii") as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def system_stopping() -> bool:
    """True when systemd says the system is shutting down."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return False
    try:
        out = subprocess.run(
            [systemctl, "is-system-running"], capture_output=True, text=True, timeout=1.0
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "stopping"


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(
        timespec="milliseconds"
    )


class Agent:
    """The running agent.  ``clock`` is monotonic, ``wall`` is for status only."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        source: Optional[PsutilSource] = None,
        use_pidfd: Optional[bool] = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._clock = clock
        self._wall = wall
        self._source = source or PsutilSource()
        self._use_pidfd = use_pidfd
        self.reactor = Reactor()
        self.boot_id = read_boot_id()
        # Made once per process start (a SIGHUP reload keeps it): the relay
        # tells a start from a repeat by (boot_id, start_id).
        self.start_id = uuid.uuid4().hex
        self.syncs = SyncAnswers()
        self.started = clock()
        self.started_wall = wall()
        self._seq = 0
        self._heartbeats = 0
        self._next_heartbeat = clock()
        self._pause_until: Optional[float] = None
        self._pause_reason = ""
        self._stop_reason: Optional[str] = None
        self._reload_requested = False
        self.reloads = 0
        self.monitor = Monitor(
            config.checks,
            config.rescan_interval,
            self._source,
            lambda on_exit: PidWatcher(
                self._source, on_exit, clock, self.reactor, use_pidfd=use_pidfd
            ),
            clock,
            self._on_transition,
            self.reactor,
            config.notify_socket,
        )
        self.port = self._make_port(config.port)
        self.control = ControlServer(config.control_socket, self.reactor, clock, self.handle)
        self._wake_r: Optional[int] = None
        self._wake_w: Optional[int] = None

    # -- messages ------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < MAX_SEQ else 0
        return self._seq

    def _send(self, message: Message) -> None:
        if self.port.send(message):
            LOG.debug("sent %s", message.TYPE)

    def _make_port(self, path: str) -> Port:
        return Port(path, self.reactor, self._clock, self._on_connect,
                    on_message=self._on_host_message)

    def _pause_state(self) -> Optional[PauseState]:
        remaining = self.pause_remaining()
        if remaining is None:
            return None
        return PauseState(remaining=remaining, reason=self._pause_reason)

    def _hello(self) -> Hello:
        return Hello(
            protocol_version=PROTOCOL_VERSION,
            agent_version=__version__,
            boot_id=self.boot_id,
            heartbeat_interval=self.config.heartbeat_interval,
            checks=tuple(self.monitor.trackers),
            start_id=self.start_id,
            pause=self._pause_state(),
            pause_known=True,
        )

    def _heartbeat(self) -> Heartbeat:
        checks = tuple((n, t.state) for n, t in self.monitor.trackers.items())
        return Heartbeat(
            seq=self._next_seq(),
            checks=checks,
            interval=self.config.heartbeat_interval,
            boot_id=self.boot_id,
            start_id=self.start_id,
            pause=self._pause_state(),
            pause_known=True,
        )

    def _send_hello(self) -> None:
        """hello, then the pause again while paused: on a 0.1.0 relay a hello ends it."""
        hello = self._hello()
        self._send(hello)
        if hello.pause is not None:
            self._send(Pause(duration=hello.pause.remaining, reason=hello.pause.reason))

    def _send_failures(self) -> None:
        for tracker in self.monitor.trackers.values():
            if tracker.state == FAILED:
                self._send(Failure(seq=self._next_seq(), check=tracker.name, reason=tracker.reason))

    def _on_connect(self) -> None:
        """The host is (back) on the port: tell it everything it must know."""
        LOG.info("host connected on %s: sending hello and current state", self.port.path)
        self._send_state()

    def _send_state(self) -> None:
        self._send_hello()
        self._beat(hello=False)
        self._send_failures()

    def _on_host_message(self, message: Message) -> None:
        if self.syncs.message(message, self._clock()):
            self._answer_sync()

    def _answer_sync(self) -> None:
        """The host asked for everything: hello, a heartbeat, a failure per failed check."""
        LOG.debug("host sent sync: answering with hello and state")
        self._send_hello()
        self._send(self._heartbeat())
        self._send_failures()

    def _beat(self, hello: bool = True) -> None:
        self._heartbeats += 1
        if hello and self._heartbeats % HELLO_EVERY == 0:
            self._send_hello()
        self._send(self._heartbeat())
        self._next_heartbeat = self._clock() + self.config.heartbeat_interval

    def _on_transition(self, t: Transition) -> None:
        if t.new == FAILED:
            LOG.warning("check %s failed: %s", t.check, t.reason)
            self._send(Failure(seq=self._next_seq(), check=t.check, reason=t.reason))
        elif t.new == OK and t.old == FAILED:
            LOG.warning("check %s recovered", t.check)
            self._send(Recovered(seq=self._next_seq(), check=t.check))

    # -- pause -------------------------------------------------------------------

    def pause_remaining(self) -> Optional[float]:
        if self._pause_until is None:
            return None
        return max(0.0, self._pause_until - self._clock())

    def pause(self, duration: float, reason: str = "") -> Pause:
        message = Pause(duration=min(duration, MAX_PAUSE_SECONDS), reason=reason)
        self._pause_until = self._clock() + message.duration
        self._pause_reason = message.reason
        LOG.warning("paused for %.0fs: %s", message.duration, reason or "no reason given")
        self._send(message)
        return message

    def resume(self) -> bool:
        was_paused = self._pause_until is not None
        self._pause_until = None
        self._pause_reason = ""
        LOG.warning("resumed")
        self._send(Resume())
        return was_paused

    # -- control requests ----------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "pause":
            duration = request.get("duration")
            reason = request.get("reason", "")
            if isinstance(duration, bool) or not isinstance(duration, (int, float)):
                return {"ok": False, "error": "pause needs a numeric duration"}
            if not 0 < duration <= MAX_PAUSE_SECONDS:
                return {"ok": False, "error": f"duration must be in (0, {MAX_PAUSE_SECONDS:g}]"}
            if not isinstance(reason, str):
                return {"ok": False, "error": "reason must be a string"}
            try:
                message = self.pause(float(duration), reason[:MAX_TEXT_BYTES])
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "duration": message.duration, "sent": self.port.connected}
        if cmd == "resume":
            was_paused = self.resume()
            return {"ok": True, "was_paused": was_paused, "sent": self.port.connected}
        return {"ok": False, "error": f"unknown command {str(cmd)[:32]!r}"}

    def status(self) -> dict[str, Any]:
        now, wall = self._clock(), self._wall()
        checks = []
        for t in self.monitor.trackers.values():
            deadline = t.deadline()
            checks.append(
                {
                    "name": t.name,
                    "kind": t.config.kind,
                    "target": t.config.target,
                    "min_count": t.config.min_count,
                    "grace": t.config.grace,
                    "state": t.state,
                    "pids": sorted(pid for pid, _ in t.members),
                    "below_min_count": t.below_min,
                    "grace_remaining": None if deadline is None else max(0.0, deadline - now),
                    "reason": t.reason or None,
                    "last_change": iso(wall - (now - t.since)),
                    "probe": t.detail(now),
                }
            )
        remaining = self.pause_remaining()
        return {
            "agent": {
                "version": __version__,
                "pid": os.getpid(),
                "config": self.config_path,
                "boot_id": self.boot_id,
                "started": iso(self.started_wall),
                "uptime": round(now - self.started, 3),
                "heartbeat_interval": self.config.heartbeat_interval,
                "rescan_interval": self.config.rescan_interval,
                "heartbeats": self._heartbeats,
                "seq": self._seq,
                "scans": self.monitor.scans,
                "reloads": self.reloads,
                "watch_method": self.monitor.watcher.method,
                "start_id": self.start_id,
            },
            "port": self.port.info(),
            "host_input": dict(
                dataclasses.asdict(self.syncs.stats),
                frames_rejected=self.port.decoder.stats.frames_rejected,
            ),
            "pause": None
            if remaining is None
            else {"remaining": round(remaining, 3), "reason": self._pause_reason},
            "checks": checks,
        }

    # -- reload --------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file; on error keep the running config.  True if applied."""
        if self.config_path is None:
            LOG.warning("reload: no config file to read")
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            LOG.error("reload failed, keeping the running config:\n%s", exc)
            return False
        old, self.config = self.config, new
        self.reloads += 1
        changed = self.monitor.reconfigure(new.checks, new.rescan_interval, new.notify_socket)
        if new.control_socket != old.control_socket:
            self.control.close()
            self.control = ControlServer(new.control_socket, self.reactor, self._clock, self.handle)
            self._start_control()
        if new.port != old.port:
            self.port.close()
            self.port = self._make_port(new.port)
        elif changed or new.heartbeat_interval != old.heartbeat_interval:
            if self.port.connected:
                self._send_state()
        LOG.warning("reloaded %s (changed checks: %s)", self.config_path, changed or "none")
        return True

    # -- the loop ------------------------------------------------------------

    def _start_control(self) -> None:
        try:
            self.control.start()
        except OSError as exc:  # RuntimeError (another agent runs) propagates
            LOG.error("control socket %s unusable: %s", self.control.path, exc)

    def _install_signals(self) -> list[Any]:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = [signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)]
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous.append((signum, signal.signal(signum, self._on_signal)))
        self.reactor.add(self._wake_r, POLLIN, self._on_wakeup)
        return previous

    def _restore_signals(self, previous: list[Any]) -> None:
        signal.set_wakeup_fd(previous[0])
        for signum, handler in previous[1:]:
            signal.signal(signum, handler)
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                self.reactor.remove(fd)
                os.close(fd)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            self._stop_reason = self._stop_reason or signal.Signals(signum).name

    def _on_wakeup(self, fd: int, revents: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    def stop(self, why: str = "requested") -> None:
        self._stop_reason = why

    def _next_deadline(self) -> float:
        times = [self._next_heartbeat, self.monitor.next_deadline()]
        times.extend((self.port.next_deadline(), self.control.next_deadline(), self._pause_until))
        times.append(self.syncs.next_deadline())
        return min(t for t in times if t is not None)

    def _on_timers(self) -> None:
        now = self._clock()
        self.port.on_timer(now)
        self.control.on_timer(now)
        self.monitor.on_timer(now)
        if self._pause_until is not None and now >= self._pause_until:
            LOG.warning("pause expired")
            self._pause_until = None
            self._pause_reason = ""
        if self.syncs.due(now):
            self._answer_sync()
        if now >= self._next_heartbeat:
            self._beat()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`stop`); returns the exit code."""
        previous = self._install_signals()
        self._start_control()
        LOG.info(
            "iim-agent %s watching %d checks, port %s, heartbeat every %ss",
            __version__,
            len(self.config.checks),
            self.config.port,
            self.config.heartbeat_interval,
        )
        try:
            while self._stop_reason is None:
                self._on_timers()
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                    continue
                if self._stop_reason is not None:
                    break
                timeout = max(0.0, self._next_deadline() - self._clock())
                self.reactor.run_once(timeout)
            self._say_goodbye()
        finally:
            self.monitor.close()
            self.control.close()
            self.port.close()
            self._restore_signals(previous)
        LOG.info("stopped (%s)", self._stop_reason)
        return 0

    def _say_goodbye(self) -> None:
        if not self.port.connected:
            return
        reason = "shutdown" if system_stopping() else "stop"
        self._send(Goodbye(reason=reason))
        if not self.port.flush(GOODBYE_FLUSH_SECONDS):
            LOG.warning("goodbye did not reach the host")
