"""Find instance channels: ``<socket_dir>/<uuid>.sock``, watched with inotify.

libvirt creates a socket when a channel is attached (or the domain starts) and
removes it on detach or destroy.  :class:`Discovery` scans the directory once,
then follows inotify events through the asyncio loop's ``add_reader``: no
polling, no new dependency (a ctypes binding to libc).  The instance's identity
is the file name, validated as a UUID; anything else is logged once and ignored.

The directory itself can be removed or replaced while the relay runs.  Its own
watch says so only once nothing holds it: a listening socket bound in it keeps
the removed directory alive, and no ``IN_DELETE_SELF`` comes.  So the parent
directory is watched for the directory's name too, and its identity is checked
every ``RECHECK_INTERVAL`` seconds as a backstop.  When it is gone the relay
re-creates it as it was (owner and mode, see :mod:`host_relay.kept_dir`),
watches it again and rescans, with one log line.
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

from host_relay.kept_dir import KeptDir

LOG = logging.getLogger(__name__)

SUFFIX = ".sock"
RECHECK_INTERVAL = 10.0  # seconds between checks that the directory is still the one watched
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
# The parent is watched for the directory's own name: removed, renamed, created again.
_PARENT_MASK = (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
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

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; one that ended already (its directory is gone) is fine."""
        Inotify._libc.inotify_rm_watch(self.fd, wd)

    def read_events(self):
        """Yield (wd, mask, name) for every queued event; never blocks."""
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
                wd, mask, _, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size
                name = data[pos : pos + length].rstrip(b"\0")
                pos += length
                yield wd, mask, os.fsdecode(name)

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
        recheck_interval: float = RECHECK_INTERVAL,
    ) -> None:
        self.socket_dir = socket_dir
        self._on_added = on_added
        self._on_removed = on_removed
        self._on_scanned = on_scanned  # after each start's first scan: the relay is ready
        self._recheck_interval = recheck_interval
        self.known: dict[str, str] = {}
        self.ignored: set[str] = set()
        self.dir = KeptDir(socket_dir)
        self.dir_recreated = 0  # times the directory was found gone or replaced, for status
        self._inotify: Optional[Inotify] = None
        self._dir_wd: Optional[int] = None
        self._parent_wd: Optional[int] = None
        self._missing_since_logged = False
        self._lost: Optional[asyncio.Future] = None
        self._timer: Optional[asyncio.TimerHandle] = None

    async def run(self) -> None:
        """Watch until cancelled; raises DiscoveryError if inotify fails."""
        loop = asyncio.get_running_loop()
        self._inotify = Inotify()
        self._lost = loop.create_future()
        try:
            self._watch()
            loop.add_reader(self._inotify.fd, self._on_readable)
            LOG.info("Watching %s for instance channels", self.socket_dir)
            self.scan()
            if self._on_scanned is not None:
                self._on_scanned()
            self._timer = loop.call_later(self._recheck_interval, self._periodic, loop)
            await self._lost
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._inotify.fd >= 0:
                loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._dir_wd = self._parent_wd = None

    def _watch(self) -> tuple[bool, Optional[str]]:
        """(Re-)create the directory if needed and watch it and its parent."""
        try:
            created, problem = self.dir.ensure()
        except OSError as exc:
            raise DiscoveryError(f"channel directory {self.socket_dir}: {exc}") from exc
        self._parent_wd = self._inotify.add_watch(self.dir.parent, _PARENT_MASK)
        self._dir_wd = self._inotify.add_watch(self.dir.path, _WATCH_MASK)
        return created, problem

    def _periodic(self, loop: asyncio.AbstractEventLoop) -> None:
        self._recheck("is no longer the directory watched")
        if self._lost is not None and not self._lost.done():
            self._timer = loop.call_later(self._recheck_interval, self._periodic, loop)

    def _recheck(self, why: str, force: bool = False) -> None:
        """Watch the directory again if the path no longer names the one watched."""
        if not force and self._dir_wd is not None and not self.dir.replaced():
            return
        closed = len(self.known)
        self.drop_all()
        if self._dir_wd is not None:
            self._inotify.rm_watch(self._dir_wd)
            self._dir_wd = None
        try:
            created, problem = self._watch()
        except DiscoveryError as exc:
            if not self._missing_since_logged:
                self._missing_since_logged = True
                self.dir_recreated += 1
                LOG.error("Channel directory %s %s and cannot be made again (%s); %d channels "
                          "closed, none is found until it exists (checked every %gs)",
                          self.socket_dir, why, exc.__cause__ or exc, closed,
                          self._recheck_interval)
            return
        if self._missing_since_logged:
            why = "can be made again"  # its loss was logged already
        else:
            self.dir_recreated += 1
        self._missing_since_logged = False
        self.scan()
        LOG.warning("Channel directory %s %s (%d channels closed); %s with %s%s and watching it "
                    "again: %d channels there now", self.socket_dir, why, closed,
                    "re-created it" if created else "a new one is there: gave it",
                    self.dir.shape, f" ({problem})" if problem else "", len(self.known))

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
        why, force = None, False
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:
                LOG.warning("inotify queue overflowed; rescanning %s", self.socket_dir)
                why = why or "was replaced while inotify events were lost"
                self.scan()
            elif wd == self._parent_wd:
                # About the name only: the directory it names now is compared with ours.
                if name == self.dir.name or mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                    why = why or ("was removed" if mask & (IN_DELETE | IN_MOVED_FROM)
                                  else "was replaced")
            elif wd != self._dir_wd:
                continue  # a directory watched before: its late events say nothing now
            elif mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                # About our directory itself: certain, even if its inode number is reused.
                why, force = "was moved away" if mask & IN_MOVE_SELF else "was removed", True
            elif mask & (IN_CREATE | IN_MOVED_TO):
                uuid = self._accept(name)
                if uuid is not None and uuid not in self.known:
                    self._add(uuid, os.path.join(self.socket_dir, name))
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                self.ignored.discard(name)
                uuid = instance_uuid_from_name(name)
                if uuid is not None and uuid in self.known:
                    self._remove(uuid)
        if why is not None:
            self._recheck(why, force)

    def _fail(self, exc: Exception) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(exc)
