"""The channel to the host, handled the way qemu-guest-agent handles its own.

The port is opened ``O_RDWR | O_NONBLOCK | O_NOCTTY`` and never blocks the
loop.  It may not exist yet (hot-plug, late udev) or vanish (unplug,
migration): the agent waits and reopens with backoff, never exits.  With no
host process on the other end a virtio-serial port reports ``POLLHUP``, writes
get ``EAGAIN`` and nothing is buffered for later, so frames are dropped
(counted) and ``on_connect`` fires when the host is back, letting the agent
send its whole state again.  A tty (``/dev/ttyS1``) is configured raw 8N1
with pyserial and then used the same way through its fd.

Without udev (minimal images, early boot) there is no
``/dev/virtio-ports/<name>`` link, only the ``/dev/vportNpM`` node whose name
is in ``/sys/class/virtio-ports/vportNpM/name``: :func:`find_vport` finds it.

The host may write to the port too: a ``sync`` frame on every (re)connect.
What it writes is read at most :data:`READ_CHUNK` bytes per wake-up and
decoded with a body limit of ``MAX_HOST_BODY``; each decoded message goes to
``on_message``, and problems are logged at most once a minute, never per
frame or byte.

Each condition is logged once when it starts, not on every retry.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import termios
from typing import Callable, Optional

import serial

from guest_agent.reactor import POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, Reactor
from iim_protocol.codec import MAX_HOST_BODY, Decoder, encode
from iim_protocol.messages import Message

LOG = logging.getLogger(__name__)

REOPEN_MIN = 0.1  # first retry after the port was missing or broke
REOPEN_MAX = 5.0  # backoff cap: a port that comes back is in use within 5 s
# With no host, a virtio port stays POLLHUP: poll it this often instead of
# spinning on it, so a returning host is noticed within a quarter second.
HOST_PROBE_INTERVAL = 0.25
# About a minute of heartbeats: anything older is superseded by newer state.
MAX_QUEUE_BYTES = 64 * 1024
# One read of at most 4 KiB per wake-up: a flooding host cannot starve the
# loop (timers run between reads) and costs a bounded amount of work per read.
READ_CHUNK = 4096
HOST_INPUT_LOG_INTERVAL = 60.0  # at most one line a minute about bad host input
SERIAL_BAUDRATE = 115200
# errnos that mean this open file is dead: close it and open the path again.
REOPEN_ERRNOS = (errno.ENODEV, errno.ENXIO, errno.EIO, errno.EPIPE, errno.EBADF)

# udev's links live in DEV_ROOT/virtio-ports; the kernel names each port in sysfs.
DEV_ROOT = "/dev"
SYSFS_VIRTIO_PORTS = "/sys/class/virtio-ports"

CLOSED = "closed"
_READ, _EOF, _CLOSED_NOW = "read", "eof", "closed_now"  # results of Port._drain
NO_HOST = "no_host"
CONNECTED = "connected"


def _read_returns_data(fd: int) -> None:
    """VMIN=1, VTIME=0: an empty read is EAGAIN and b"" really means hangup.

    pyserial leaves VMIN=0, where a read with nothing to read returns b"".
    """
    attrs = termios.tcgetattr(fd)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def find_vport(
    path: str, sysfs_root: str = SYSFS_VIRTIO_PORTS, dev_root: str = DEV_ROOT
) -> Optional[str]:
    """The ``/dev/vportNpM`` node behind ``/dev/virtio-ports/<name>``, or None.

    Only for paths in udev's virtio-ports directory: the kernel names each
    port in ``sysfs_root/vportNpM/name``; the node is ``dev_root/vportNpM``.
    """
    links, name = os.path.split(path)
    if links != os.path.join(dev_root, "virtio-ports") or not name:
        return None
    try:
        entries = sorted(os.listdir(sysfs_root))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(sysfs_root, entry, "name"), encoding="utf-8") as f:
                if f.read().strip() == name:
                    return os.path.join(dev_root, entry)
        except (OSError, UnicodeDecodeError):
            continue
    return None


class Port:
    """A non-blocking, self-healing writer of frames (and reader of host bytes)."""

    def __init__(
        self,
        path: str,
        reactor: Reactor,
        clock: Callable[[], float],
        on_connect: Callable[[], None],
        sysfs_root: str = SYSFS_VIRTIO_PORTS,
        dev_root: str = DEV_ROOT,
        on_message: Optional[Callable[[Message], None]] = None,
    ) -> None:
        self.path = path
        self.device = path  # what was opened: path, or the vport node find_vport found
        self._sysfs_root = sysfs_root
        self._dev_root = dev_root
        self._reactor = reactor
        self._clock = clock
        self._on_connect = on_connect
        self._on_message = on_message
        self.state = CLOSED
        self.is_tty = False
        self._fd: Optional[int] = None
        self._serial: Optional[serial.Serial] = None
        self._queue: collections.deque[bytearray] = collections.deque()
        self._queued = 0
        self._backoff = REOPEN_MIN
        self._retry_at: Optional[float] = clock()
        self._condition = ""  # the last condition logged, so each is logged once
        self.decoder = Decoder(max_body=MAX_HOST_BODY)
        self._input_logged_at: Optional[float] = None
        self._input_logged_rejects = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.opens = 0
        self.host_connects = 0
        self.last_error = ""

    # -- public ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def send(self, message: Message) -> bool:
        """Queue one frame and write what the port takes now; False if it was dropped."""
        if self.state != CONNECTED:
            self.frames_dropped += 1
            return False
        frame = bytearray(encode(message))
        # Drop the oldest whole frames (never the partly written head) to make room.
        while self._queued + len(frame) > MAX_QUEUE_BYTES and len(self._queue) > 1:
            old = self._queue[1]
            del self._queue[1]
            self._queued -= len(old)
            self.frames_dropped += 1
        if self._queued + len(frame) > MAX_QUEUE_BYTES:
            self.frames_dropped += 1
            return False
        self._queue.append(frame)
        self._queued += len(frame)
        self._flush()
        return True

    def next_deadline(self) -> Optional[float]:
        return self._retry_at

    def on_timer(self, now: float) -> None:
        if self._retry_at is None or now < self._retry_at:
            return
        self._retry_at = None
        if self.state == CLOSED:
            self._open()
        elif self.state == NO_HOST:
            self._probe()

    def flush(self, timeout: float) -> bool:
        """Write the queue out, waiting at most ``timeout`` (used once, before exit)."""
        deadline = self._clock() + timeout
        while self._queue and self.state == CONNECTED and self._fd is not None:
            left = deadline - self._clock()
            if left <= 0:
                break
            p = select.poll()
            p.register(self._fd, POLLOUT)
            if p.poll(int(left * 1000) + 1):
                self._flush()
        return not self._queue

    def close(self) -> None:
        self._close()
        self._retry_at = None

    def info(self) -> dict:
        return {
            "path": self.path,
            "device": self.device,
            "kind": "tty" if self.is_tty else "virtio-serial",
            "state": self.state,
            "open": self._fd is not None,
            "host_connected": self.connected,
            "frames_sent": self.frames_sent,
            "frames_dropped": self.frames_dropped,
            "bytes_sent": self.bytes_sent,
            "queued_bytes": self._queued,
            "opens": self.opens,
            "host_connects": self.host_connects,
            "last_error": self.last_error,
            "received": dict(self.decoder.stats.as_dict(), messages=self.messages_received),
        }

    # -- opening ---------------------------------------------------------------

    def _note(self, condition: str, message: str, *args: object) -> None:
        """Log ``message`` unless ``condition`` is what was logged last."""
        if condition != self._condition:
            self._condition = condition
            LOG.warning(message, *args)

    def _resolve(self) -> str:
        """``path``, or the vport node named like it when udev made no link."""
        if os.path.exists(self.path):
            return self.path
        found = find_vport(self.path, self._sysfs_root, self._dev_root)
        if found is None:
            return self.path
        if found != self.device:
            LOG.info("port %s has no udev link: opening %s, which sysfs names %s",
                     self.path, found, os.path.basename(self.path))
        return found

    def _open(self) -> None:
        self.device = device = self._resolve()
        try:
            fd = os.open(device, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            self._open_failed(exc)
            return
        self.is_tty = os.isatty(fd) or os.path.basename(device).startswith("tty")
        if self.is_tty:
            os.close(fd)
            try:
                self._serial = serial.Serial(
                    device,
                    baudrate=SERIAL_BAUDRATE,
                    bytesize=serial.EIGHTBITS,
                    parity=serial.PARITY_NONE,
                    stopbits=serial.STOPBITS_ONE,
                    xonxoff=False,
                    rtscts=False,
                    timeout=0,
                    exclusive=True,
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                self._serial = None
                self._open_failed(exc)
                return
            fd = self._serial.fileno()
            try:
                os.set_blocking(fd, False)
                _read_returns_data(fd)
            except (OSError, termios.error) as exc:
                self._serial.close()
                self._serial = None
                self._open_failed(exc)
                return
        self._fd = fd
        self.opens += 1
        self._backoff = REOPEN_MIN
        if self._condition:
            LOG.warning("port %s is open (%s)", self.path, "tty" if self.is_tty else "virtio")
        else:
            LOG.info("port %s is open (%s)", self.path, "tty" if self.is_tty else "virtio")
        self._condition = ""
        self.state = NO_HOST
        self._probe()

    def _open_failed(self, exc: BaseException) -> None:
        code = getattr(exc, "errno", None)
        self.last_error = str(exc)
        if code == errno.ENOENT:
            self._note("ENOENT", "port %s does not exist yet: waiting for it", self.path)
        elif code == errno.EBUSY:
            self._note("EBUSY", "port %s is busy (another agent?): retrying", self.path)
        else:
            self._note(f"open:{code}", "cannot open port %s: %s; retrying", self.path, exc)
        self._retry_later()

    def _retry_later(self) -> None:
        self._retry_at = self._clock() + self._backoff
        self._backoff = min(self._backoff * 2, REOPEN_MAX)

    def _close(self) -> None:
        if self._fd is not None:
            self._reactor.remove(self._fd)
            if self._serial is not None:
                try:
                    self._serial.close()
                except (OSError, serial.SerialException):
                    pass
            else:
                os.close(self._fd)
        self._fd = None
        self._serial = None
        self._drop_queue()
        self.decoder.reset()
        self.state = CLOSED

    def _reopen(self, why: str) -> None:
        self.last_error = why
        self._note(f"reopen:{why}", "port %s broke (%s): reopening", self.path, why)
        self._close()
        self._retry_later()

    def _drop_queue(self) -> None:
        self.frames_dropped += len(self._queue)
        self._queue.clear()
        self._queued = 0

    # -- host presence -------------------------------------------------------

    def _probe(self) -> None:
        """Look (without waiting) whether a host is on the other end."""
        assert self._fd is not None
        p = select.poll()
        p.register(self._fd, POLLIN | POLLOUT)
        revents = p.poll(0)
        ev = revents[0][1] if revents else 0
        if ev & (POLLERR | POLLNVAL):
            self._reopen("error on poll")
            return
        if ev & POLLHUP:
            if self.is_tty:
                self._reopen("hangup")
                return
            if ev & POLLIN and self._drain() == _CLOSED_NOW:
                return
            self._note("nohost", "no host is listening on port %s: dropping frames", self.path)
            self._retry_at = self._clock() + HOST_PROBE_INTERVAL
            return
        self.state = CONNECTED
        self.host_connects += 1
        if self._condition == "nohost":
            LOG.warning("host is back on port %s", self.path)
        self._condition = ""
        self._reactor.add(self._fd, POLLIN, self._on_event)
        self._on_connect()

    def _host_gone(self, why: str) -> None:
        if self.is_tty:
            self._reopen(why)
            return
        if self._fd is not None:
            self._reactor.remove(self._fd)
        self._drop_queue()
        self.decoder.reset()
        self.state = NO_HOST
        self._note("nohost", "host left port %s (%s): dropping frames", self.path, why)
        self._retry_at = self._clock() + HOST_PROBE_INTERVAL

    # -- I/O -------------------------------------------------------------------

    def _on_event(self, fd: int, revents: int) -> None:
        if revents & (POLLERR | POLLNVAL):
            self._reopen("error on poll")
            return
        if revents & POLLIN:
            result = self._drain()
            if result == _CLOSED_NOW:
                return
            if result == _EOF:
                self._host_gone(f"end of file, revents {revents:#x}")
                return
        if revents & POLLHUP:
            self._host_gone("hangup")
            return
        if revents & POLLOUT:
            self._flush()

    def _drain(self) -> str:
        """Read once what the host sent: _READ, _EOF, or _CLOSED_NOW if the port broke.

        One read per wake-up: if more is waiting, poll says so again at once,
        after the timers (heartbeats) had their turn.
        """
        if self._fd is None:
            return _READ
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return _READ
        except OSError as exc:
            if exc.errno in REOPEN_ERRNOS:
                self._reopen(os.strerror(exc.errno or 0))
                return _CLOSED_NOW
            raise
        if not data:
            return _EOF
        for message in self.decoder.feed(data):
            self.messages_received += 1
            if self._on_message is not None:
                self._on_message(message)  # may answer, and a write may break the port
        self._note_host_input()
        return _READ if self._fd is not None else _CLOSED_NOW

    def _note_host_input(self) -> None:
        """One line a minute at most when the host sent frames the agent rejected."""
        rejected = self.decoder.stats.frames_rejected
        if rejected == self._input_logged_rejects:
            return
        now = self._clock()
        if self._input_logged_at is not None and now < (
            self._input_logged_at + HOST_INPUT_LOG_INTERVAL
        ):
            return
        LOG.warning(
            "port %s: the host sent %d frames the agent rejected (%s); only sync is read",
            self.path,
            rejected - self._input_logged_rejects,
            ", ".join(f"{k} {v}" for k, v in sorted(self.decoder.stats.rejected.items())),
        )
        self._input_logged_at = now
        self._input_logged_rejects = rejected

    def _flush(self) -> None:
        while self._queue and self._fd is not None:
            head = self._queue[0]
            try:
                n = os.write(self._fd, head)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in REOPEN_ERRNOS:
                    self._reopen(os.strerror(exc.errno or 0))
                    return
                raise
            self.bytes_sent += n
            self._queued -= n
            if n < len(head):
                del head[:n]
                break
            self._queue.popleft()
            self.frames_sent += 1
        if self._fd is not None and self.state == CONNECTED:
            self._reactor.modify(self._fd, POLLIN | (POLLOUT if self._queue else 0))
