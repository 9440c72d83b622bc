"""What is wrong with the disk under the outbox, in words an operator can act on.

:func:`classify_disk_error` turns an exception from a commit into an errno
name (ENOSPC, EROFS, EIO, ...) and the fix; :class:`DiskProblem` is what the
writer shows in status, on /metrics and in its one ERROR line.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from typing import Optional


@dataclasses.dataclass(frozen=True)
class DiskProblem:
    """Why the outbox cannot be written, for status, metrics and the one ERROR line."""

    path: str
    error: str
    errno_name: str  # ENOSPC | EIO | EROFS | FROZEN | other
    fix: str
    since: float  # wall clock of the first failure of this run


def classify_disk_error(exc: BaseException, path: str) -> tuple[str, str]:
    """(errno name, fix) for an exception from a commit; call it off the loop.

    sqlite reports a write refused by a read-only or full file system as a
    generic I/O error at times (Python does not expose its errno), so the file
    system itself is asked too: statvfs (read-only mount, no space left), and a
    small probe file written, synced and removed next to the outbox (ext4 turned
    read-only by an error does not show in statvfs).  A device that fails
    writes stays EIO even when the device's own reason is a full backing store.
    """
    code: Optional[int] = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    where = os.path.dirname(path) or "."
    try:
        fs = os.statvfs(where)
        if fs.f_flag & os.ST_RDONLY:
            code = errno.EROFS
        elif fs.f_bavail == 0 and code is None:
            code = errno.ENOSPC
    except OSError:
        pass
    if code is None and _probe(where) == errno.EROFS:  # ext4's read-only-after-error
        code = errno.EROFS
    if code == errno.ENOSPC or name.startswith("SQLITE_FULL") or "disk is full" in text:
        kind = "ENOSPC"
    elif (code == errno.EROFS or name.startswith("SQLITE_READONLY")
          or "readonly" in text or "read-only" in text):
        kind = "EROFS"
    elif code == errno.EIO or name.startswith("SQLITE_IOERR") or "i/o error" in text:
        kind = "EIO"
    else:
        kind = errno.errorcode.get(code or 0, "other")
    fixes = {
        "ENOSPC": f"free space on the file system holding {where} (df {where})",
        "EROFS": f"the file system holding {where} is read-only: repair it and remount "
                 "it read-write",
        "EIO": f"the disk holding {where} returns I/O errors: check the kernel log (dmesg), "
               "repair or replace it, or move [DEFAULT] state_path to a healthy disk",
    }
    return kind, fixes.get(kind, f"check the file system holding {where}")


def _probe(where: str) -> Optional[int]:
    """The errno a small synced write next to the outbox gets, or None if it works."""
    path = os.path.join(where, ".iim-relay-probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError as exc:
        return exc.errno
    return None
