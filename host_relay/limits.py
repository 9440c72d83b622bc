"""Process limits the relay needs on a busy compute host.

Each instance's channel is one open socket, so a host with 2,000 instances
needs over 2,000 file descriptors; a service's default soft limit is often
1024.  Past it, channels silently fail to connect and the control socket
stops accepting, so the relay raises its soft limit to the hard limit at
start and says what it got.
"""

from __future__ import annotations

import logging
import resource

LOG = logging.getLogger(__name__)

# Below this many descriptors a compute host's worth of instances cannot be
# watched: say so loudly at start-up (the systemd unit sets LimitNOFILE).
WANT_NOFILE = 8192


def raise_nofile_limit(want: int = WANT_NOFILE) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
    if target == resource.RLIM_INFINITY:
        target = max(soft, want)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            LOG.warning("Cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft < want:
        LOG.warning(
            "The open-file limit is %d: the relay needs one descriptor per instance channel, "
            "so at most about %d instances can be watched; raise it (systemd: LimitNOFILE=%d)",
            soft, max(0, soft - 64), want,
        )
    else:
        LOG.info("Open-file limit: %d", soft)
    return soft
