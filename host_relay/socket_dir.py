"""The channel socket directory: QEMU may create sockets in it, and stale ones are removed.

With hot-plug, libvirt (as the QEMU user) creates ``<socket_dir>/<uuid>.sock``.
The directory must be writable by that user, and a socket left behind by an
earlier domain and owned by someone else makes the next attach fail with
"Unable to unlink ...: Operation not permitted".  :func:`prepare` gives the
directory to the QEMU user (mode 0770); :func:`remove_if_stale` deletes a
socket only when it is certainly stale: a socket, named ``<uuid>.sock``, whose
domain the caller knows is not using it, and on which nothing listens.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import socket
import stat
from typing import Optional

from host_relay.discovery import instance_uuid_from_name

LOG = logging.getLogger(__name__)

DIR_MODE = 0o770  # the QEMU user and its group create sockets; root (the relay) reads them
# The QEMU user on Debian/Ubuntu, then on RHEL and derivatives.
QEMU_USERS = ("libvirt-qemu", "qemu")
_PROBE_TIMEOUT = 0.5  # a listening socket accepts at once; a stale one refuses at once


def resolve_owner(owner: str = "", group: str = "") -> tuple[Optional[int], Optional[int], str]:
    """(uid, gid, description) for the directory; (None, None, why) to leave it alone.

    Raises ValueError for a user or group that does not exist.
    """
    if owner:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise ValueError(f"[libvirt] socket_owner = {owner}: no such user") from None
    else:
        pw = None
        for name in QEMU_USERS:
            try:
                pw = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if pw is None:
            return None, None, f"none of the users {', '.join(QEMU_USERS)} exists"
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"[libvirt] socket_group = {group}: no such group") from None
    else:
        gid = pw.pw_gid
    return pw.pw_uid, gid, f"{pw.pw_name}:{grp.getgrgid(gid).gr_name}"


def prepare(path: str, owner: str = "", group: str = "") -> Optional[str]:
    """Create ``path`` and give it to the QEMU user; returns a problem for status, or None."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    try:
        uid, gid, who = resolve_owner(owner, group)
    except ValueError as exc:
        LOG.error("%s; %s keeps its owner, so hot-plugged channels may fail", exc, path)
        return str(exc)
    if uid is None:
        LOG.info("Channel directory %s keeps its owner: %s", path, who)
        return None
    st = os.stat(path)
    if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, DIR_MODE):
        return None
    try:
        os.chown(path, uid, gid)
        os.chmod(path, DIR_MODE)
    except OSError as exc:
        problem = f"cannot give {path} to {who} (mode {DIR_MODE:o}): {exc.strerror}"
        LOG.warning("%s; QEMU may be unable to create channel sockets there", problem)
        return problem
    LOG.info("Channel directory %s now belongs to %s, mode %o", path, who, DIR_MODE)
    return None


def has_listener(path: str) -> bool:
    """True if something accepts connections on the UNIX socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        # EAGAIN: the backlog is full, so someone listens; anything else: assume alive.
        return exc.errno != errno.ENOENT
    finally:
        probe.close()


def remove_if_stale(path: str) -> bool:
    """Delete ``path`` if it is a ``<uuid>.sock`` socket nobody listens on; True if deleted.

    The caller must know that the socket's domain does not use it (not
    running, or its live XML has no channel there): connecting to a live
    QEMU channel would look like a host connection to the guest.
    """
    if instance_uuid_from_name(os.path.basename(path)) is None:
        return False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or has_listener(path):
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        LOG.warning("Cannot remove stale channel socket %s: %s", path, exc)
        return False
    LOG.info("Removed stale channel socket %s (owner uid %d, nothing listening)", path, st.st_uid)
    return True


def sweep(socket_dir: str, active_uuids: set[str]) -> list[str]:
    """Remove stale sockets of domains not in ``active_uuids``; returns the paths removed."""
    removed = []
    try:
        names = os.listdir(socket_dir)
    except OSError as exc:
        LOG.warning("Cannot list %s for stale sockets: %s", socket_dir, exc)
        return removed
    for name in sorted(names):
        uuid = instance_uuid_from_name(name)
        if uuid is None or uuid in active_uuids:
            continue
        path = os.path.join(socket_dir, name)
        if remove_if_stale(path):
            removed.append(path)
    return removed
