"""Opening the outbox at start-up: a clear error for what the operator must fix, salvage else.

Two kinds of start-up failure, handled differently:

- The relay cannot use the place: a read-only file system, a directory the
  relay's user cannot write, a path through a file, no space, a file that is not
  an outbox at all, an outbox written by a newer relay.  These raise
  :class:`OutboxStartError` (a configuration error: ``iim-relay run`` prints the
  file, the cause and the fix and exits 2, no traceback).
- The outbox itself is damaged (a bad header, a truncated file, garbage pages):
  refusing to start would leave every instance unmonitored over a file the
  operator can do little about.  The damaged file is moved aside next to it
  (``outbox.sqlite.corrupt-<UTC time>``, with its ``-wal``/``-shm``; never
  deleted), what can still be read from it is carried into a fresh outbox (see
  :mod:`host_relay.outbox_salvage`) and the relay starts, with one ERROR that
  says what was kept, where, and how many entries were recovered.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
import urllib.parse
from typing import Callable, Optional

from host_relay import outbox_salvage
from host_relay.conf import ConfigError
from host_relay.outbox import Outbox, OutboxError

LOG = logging.getLogger(__name__)

_FIX_PLACE = "or set [DEFAULT] state_path to a local directory the relay can write"
# What sqlite says about a file it can read but that is damaged.
_CORRUPT_MESSAGES = ("malformed", "not a database", "corrupt")


class OutboxStartError(ConfigError):
    """The outbox cannot be opened for a reason the operator must fix: file, cause, fix."""

    def __init__(self, path: str, cause: str, fix: str) -> None:
        self.path, self.cause, self.fix = path, cause, fix
        super().__init__(f"outbox {path}: {cause}; fix: {fix}")


def open_outbox(state_path: str, path: str,
                wall_clock: Callable[[], float] = time.time) -> Outbox:
    """The relay's outbox at ``path`` in ``state_path``, created if needed, salvaged if damaged.

    Raises OutboxStartError for what the operator must fix, logged here once (outside
    the handler, so the log line is the message alone, without the exception again).
    """
    error = None
    try:
        return _open(state_path, path, wall_clock)
    except OutboxStartError as exc:
        error = exc
    LOG.error("%s", error)
    raise error


def _open(state_path: str, path: str, wall_clock: Callable[[], float]) -> Outbox:
    _make_state_dir(state_path, path)
    _check_writable(path)
    damage = _damage(path)
    if damage is None:
        try:
            return Outbox(path)
        except OutboxError as exc:  # written by a newer relay: its message has the fix
            raise OutboxStartError(path, "it " + str(exc).removeprefix(f"{path} "),
                                   "run the newer iim-relay") from None
        except sqlite3.DatabaseError as exc:
            damage = _classify(path, exc)
    return _salvage(path, damage, wall_clock())


def _make_state_dir(state_path: str, path: str) -> None:
    try:
        os.makedirs(state_path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise _place_error(path, exc, state_path) from None
    if not os.path.isdir(state_path):
        raise OutboxStartError(path, f"{state_path} is not a directory",
                               f"move it away {_FIX_PLACE}")


def _check_writable(path: str) -> None:
    """The directory (for the file and its -wal/-shm) and an existing file must be writable."""
    if os.path.isdir(path):
        raise OutboxStartError(path, "it is a directory, not a file", f"move it away {_FIX_PLACE}")
    targets = [os.path.dirname(path) or "."] + ([path] if os.path.lexists(path) else [])
    for target in targets:
        if not os.access(target, os.W_OK):
            raise _place_error(path, OSError(_why_unwritable(target), "not writable", target),
                               target)


def _why_unwritable(target: str) -> int:
    try:
        if os.statvfs(target).f_flag & os.ST_RDONLY:
            return errno.EROFS
    except OSError:
        pass
    return errno.EACCES


def _place_error(path: str, exc: OSError, where: str) -> OutboxStartError:
    where = exc.filename or where
    if exc.errno == errno.EROFS:
        return OutboxStartError(
            path, f"{where} is on a read-only file system",
            f"remount it read-write, {_FIX_PLACE} (under the packaged systemd unit, "
            f"ProtectSystem=strict leaves only /var/lib/iim writable: add the directory to "
            f"ReadWritePaths= in a drop-in)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OutboxStartError(
            path, f"the relay (uid {os.geteuid()}) may not write to {where}",
            f"give the relay's user write access to it (the package's systemd unit runs the "
            f"relay as root with StateDirectory=iim), {_FIX_PLACE}")
    if exc.errno == errno.ENOTDIR:
        return OutboxStartError(path, f"a part of {where} is a file, not a directory",
                                f"correct the path {_FIX_PLACE}")
    if exc.errno == errno.ENOSPC:
        return OutboxStartError(path, f"no space left on the file system of {where}",
                                "free space there, " + _FIX_PLACE)
    return OutboxStartError(path, f"{where}: {exc.strerror or exc}", _FIX_PLACE)


def _damage(path: str) -> Optional[str]:
    """What is wrong with an existing outbox file, read-only; None if it checks clean or is new.

    Raises OutboxStartError for a file that is no outbox and errors of the place.
    """
    try:
        if os.path.getsize(path) == 0:
            return None
    except FileNotFoundError:
        return None
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        return _classify(path, exc)
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return _classify(path, exc)
    finally:
        db.close()
    problems = [str(r[0]) for r in rows if r[0] != "ok"]
    if problems:
        return f"integrity check: {'; '.join(problems[:3])}"
    return None


def _classify(path: str, exc: sqlite3.DatabaseError) -> str:
    message = str(exc)
    if "disk is full" in message:
        raise _place_error(path, OSError(errno.ENOSPC, message), os.path.dirname(path)) from None
    if "locked" in message:
        raise OutboxStartError(path, f"another process holds it locked ({message})",
                               "stop the other iim-relay (or the tool holding it) and start "
                               "again") from None
    if not any(m in message for m in _CORRUPT_MESSAGES):
        raise OutboxStartError(path, f"sqlite cannot open it: {message}",
                               f"check the disk and the file's permissions, {_FIX_PLACE}") from None
    if not outbox_salvage.looks_like_outbox(path):
        raise OutboxStartError(
            path, f"it is not an iim outbox ({message}; it starts with "
                  f"{outbox_salvage.head(path)!r})",
            f"move the file away (the relay then creates a new outbox), {_FIX_PLACE}") from None
    return message


def _salvage(path: str, damage: str, now: float) -> Outbox:
    try:
        found = outbox_salvage.recover(path)  # reads a copy: the file stays as it is
    except (OSError, sqlite3.Error) as exc:
        raise OutboxStartError(
            path, f"it is damaged ({damage}) and no copy can be made to read what it still "
                  f"holds: {getattr(exc, 'strerror', None) or exc}",
            f"free space in {os.path.dirname(path)} (the file is unchanged; the next start "
            f"salvages it), {_FIX_PLACE}") from None
    try:
        kept = outbox_salvage.move_aside(path, now)
    except OSError as exc:
        raise OutboxStartError(path, f"it is damaged ({damage}) and cannot be moved aside: "
                                     f"{exc.strerror or exc}",
                               f"move it away by hand (keep it for inspection), {_FIX_PLACE}"
                               ) from None
    try:
        Outbox(path).close()  # a fresh, empty outbox with the current schema
        carried = outbox_salvage.carry_over(path, found, now)
        outbox = Outbox(path)
    except (OSError, sqlite3.Error) as exc:
        outbox_salvage.put_back(kept, path)
        raise OutboxStartError(
            path, f"it is damaged ({damage}) and no new outbox can be made next to it: {exc}",
            f"free space or fix the disk (the damaged file is back in place; the next start "
            f"salvages it), {_FIX_PLACE}") from None
    LOG.error(
        "The outbox %s was damaged (%s); it is kept as %s for inspection. Recovered %d "
        "pending and %d dead-lettered notifications into a new outbox (read with %s; %d "
        "delivered rows not carried over, %d damaged rows skipped). Pending ones are sent "
        "now; check `iim-relay status` and Masakari for notifications that may be missing",
        path, damage, kept, carried["queued"], carried["dead"], found.how,
        carried["delivered"], found.skipped + carried["invalid"])
    return outbox
