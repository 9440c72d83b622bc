"""sd_notify(3) without libsystemd: readiness, watchdog and status for ``Type=notify``.

systemd passes the address of its notification socket in ``$NOTIFY_SOCKET``:
a filesystem path, or an abstract-namespace name written with a leading ``@``.
A notification is one datagram of ``KEY=VALUE`` lines, e.g. ``READY=1`` or
``WATCHDOG=1``.  Outside systemd the variable is unset and :func:`notify` does
nothing, so the relay runs the same way under a terminal, a test or a unit.

With ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``,
the process meant); :func:`watchdog_interval` turns that into seconds.  The
relay sends ``WATCHDOG=1`` every half interval from its event loop, so a
wedged loop stops feeding the watchdog and systemd restarts the relay.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Optional

LOG = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
# systemd's own limit for a notification datagram is far larger; ours are a few lines.
MAX_STATE_BYTES = 4096


def _address(value: str) -> Optional[str]:
    """The sendto() address for a $NOTIFY_SOCKET value, or None if we cannot use it."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:CID:PORT (systemd 254+ in VMs): not needed on a compute host


def notify(state: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Send ``state`` (``"READY=1"``, ``"WATCHDOG=1"``, ``"STATUS=..."``; lines joined by \\n).

    Returns True if the datagram was sent, False when not running under
    systemd (no ``$NOTIFY_SOCKET``) or when sending failed (logged, never
    raised: a missed notification must not stop the relay).  Never blocks.
    """
    env = os.environ if environ is None else environ
    value = env.get(NOTIFY_SOCKET)
    if not value:
        return False
    address = _address(value)
    if address is None:
        LOG.warning("Ignoring %s=%r: only UNIX socket paths and @abstract names are supported",
                    NOTIFY_SOCKET, value)
        return False
    data = state.encode("utf-8")
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"notification of {len(data)} bytes; at most {MAX_STATE_BYTES}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(data, address)
    except OSError as exc:
        LOG.warning("Cannot notify systemd at %s (%s): %s",
                    value, state.split("\n", 1)[0], exc.strerror or exc)
        return False
    return True


def watchdog_interval(environ: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """systemd's watchdog timeout for this process in seconds, or None if there is none.

    Like sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` must be a positive integer,
    and ``$WATCHDOG_PID``, when set, must be this process's pid (the variables
    may have leaked from a parent that systemd watches).
    """
    env = os.environ if environ is None else environ
    usec = env.get(WATCHDOG_USEC)
    if not usec:
        return None
    pid = env.get(WATCHDOG_PID)
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            LOG.warning("Ignoring the watchdog: %s=%r is not a pid", WATCHDOG_PID, pid)
            return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        LOG.warning("Ignoring the watchdog: %s=%r is not a positive number of microseconds",
                    WATCHDOG_USEC, usec)
        return None
    return value / 1_000_000
