"""Find instance channels: ``<socket_dir>/<uuid>.sock``, watched with inotify.

libvirt creates a socket when a channel is attached (or the domain starts) and
removes it on detach or destroy.  :class:`Discovery` scans the directory once,
then follows inotify events through the asyncio loop's ``add_reader``: no
polling, no new dependency (a ctypes binding to libc).  The instance's identity
is the file name, validated as a UUID; anything else is logged once and ignored.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import stat
import struct
from typing import Callable, Optional

LOG = logging.getLogger(__name__)

SUFFIX = ".sock"
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# <sys/inotify.h>
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_WATCH_MASK = (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
               | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class DiscoveryError(RuntimeError):
    """The socket directory cannot be watched."""


def instance_uuid_from_name(name: str) -> Optional[str]:
    """The instance UUID a socket file name stands for, or None if it is not one of ours."""
    if not name.endswith(SUFFIX):
        return None
    stem = name[: -len(SUFFIX)]
    return stem if _UUID_RE.match(stem) else None


class Inotify:
    """A minimal inotify(7) handle: an fd to add to the loop, and event parsing."""

    _libc = None

    def __init__(self) -> None:
        if Inotify._libc is None:
            Inotify._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                        use_errno=True)
        self.fd = self._check(Inotify._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "init")

    def _check(self, ret: int, what: str) -> int:
        if ret < 0:
            err = ctypes.get_errno()
            raise DiscoveryError(f"inotify {what}: {os.strerror(err)}")
        return ret

    def add_watch(self, path: str, mask: int) -> int:
        return self._check(Inotify._libc.inotify_add_watch(self.fd, os.fsencode(path), mask),
                           f"watch {path}")

    def read_events(self):
        """Yield (mask, name) for every queued event; never blocks."""
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            pos = 0
            while pos + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size
                name = data[pos : pos + length].rstrip(b"\0")
                pos += length
                yield mask, os.fsdecode(name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Discovery:
    """Calls ``on_added(uuid, path)`` / ``on_removed(uuid)`` as channel sockets come and go."""

    def __init__(
        self,
        socket_dir: str,
        on_added: Callable[[str, str], None],
        on_removed: Callable[[str], None],
        on_scanned: Optional[Callable[[], None]] = None,
    ) -> None:
        self.socket_dir = socket_dir
        self._on_added = on_added
        self._on_removed = on_removed
        self._on_scanned = on_scanned  # after each start's first scan: the relay is ready
        self.known: dict[str, str] = {}
        self.ignored: set[str] = set()
        self._inotify: Optional[Inotify] = None
        self._lost: Optional[asyncio.Future] = None

    async def run(self) -> None:
        """Watch until cancelled; raises DiscoveryError if the directory goes away."""
        loop = asyncio.get_running_loop()
        os.makedirs(self.socket_dir, mode=0o755, exist_ok=True)
        self._inotify = Inotify()
        self._lost = loop.create_future()
        try:
            self._inotify.add_watch(self.socket_dir, _WATCH_MASK)
            loop.add_reader(self._inotify.fd, self._on_readable)
            LOG.info("Watching %s for instance channels", self.socket_dir)
            self.scan()
            if self._on_scanned is not None:
                self._on_scanned()
            await self._lost
        finally:
            if self._inotify.fd >= 0:
                loop.remove_reader(self._inotify.fd)
            self._inotify.close()

    def drop_all(self) -> None:
        for uuid in list(self.known):
            self._remove(uuid)

    def scan(self) -> None:
        """Bring ``known`` in line with the directory (at start and after an overflow)."""
        try:
            names = os.listdir(self.socket_dir)
        except OSError as exc:
            LOG.error("Cannot list %s: %s", self.socket_dir, exc)
            return
        present = {}
        for name in names:
            uuid = self._accept(name)
            if uuid is not None:
                present[uuid] = os.path.join(self.socket_dir, name)
        for uuid in list(self.known):
            if uuid not in present:
                self._remove(uuid)
        for uuid, path in present.items():
            if uuid not in self.known:
                self._add(uuid, path)

    def _accept(self, name: str) -> Optional[str]:
        uuid = instance_uuid_from_name(name)
        path = os.path.join(self.socket_dir, name)
        if uuid is not None:
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    return uuid
            except FileNotFoundError:
                return None  # gone already; its delete event follows
            except OSError as exc:
                LOG.warning("Cannot stat %s: %s", path, exc)
                return None
        if name not in self.ignored:
            self.ignored.add(name)
            LOG.warning("Ignoring %s in the channel directory: not a socket named <uuid>%s",
                        path, SUFFIX)
        return None

    def _add(self, uuid: str, path: str) -> None:
        self.known[uuid] = path
        LOG.info("Found channel of instance %s at %s", uuid, path)
        self._call(self._on_added, uuid, path)

    def _remove(self, uuid: str) -> None:
        self.known.pop(uuid, None)
        LOG.info("Channel of instance %s is gone", uuid)
        self._call(self._on_removed, uuid)

    def _call(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - one bad socket must not stop discovery
            LOG.exception("Handling channel %s failed", args[0])

    def _on_readable(self) -> None:
        try:
            events = list(self._inotify.read_events())
        except OSError as exc:
            self._fail(DiscoveryError(f"reading inotify events: {exc}"))
            return
        for mask, name in events:
            if mask & IN_Q_OVERFLOW:
                LOG.warning("inotify queue overflowed; rescanning %s", self.socket_dir)
                self.scan()
            elif mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                self.drop_all()
                self._fail(DiscoveryError(f"channel directory {self.socket_dir} went away"))
                return
            elif mask & (IN_CREATE | IN_MOVED_TO):
                uuid = self._accept(name)
                if uuid is not None and uuid not in self.known:
                    self._add(uuid, os.path.join(self.socket_dir, name))
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                self.ignored.discard(name)
                uuid = instance_uuid_from_name(name)
                if uuid is not None and uuid in self.known:
                    self._remove(uuid)

    def _fail(self, exc: Exception) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(exc)
