"""The limits of one failure detector, as a frozen value built from the [detector] options.

Every field is the [detector] option of the same name
(``host_relay/conf/detector.py``): its default, its bounds and its meaning
are written there, once, and read here through :mod:`host_relay.conf.bounds`.
``host_relay.conf.detector_config_from`` builds one from a loaded
configuration; tests and tools build them by hand and get the same checks,
each failure naming the field, the option's bounds and the reason for them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from host_relay.conf import bounds
from host_relay.conf.detector import detector_opts

__all__ = ["DetectorConfig"]


def _opt(name: str) -> Any:  # a dataclass field
    return bounds.opt_field(detector_opts, name)


# Why each limit exists, for the error message (the numbers come from the option).
_WHY = {
    "missed_heartbeats": "fewer would call a guest hung after one late heartbeat (0: every guest "
                         "hung); more makes hang detection useless",
    "min_interval": "the protocol's heartbeat limits: at most 10 Hz, at least once a minute",
    "max_interval": "the protocol caps heartbeat intervals at a minute",
    "min_uptime": "a boot that needs more than an hour hides hangs for too long",
    "max_pause": "the protocol caps pauses at a week",
    "cooldown": "a cooldown longer than a day leaves a recovered instance unwatched",
    "max_notifications": "0 would silently disable recovery (stop the relay instead)",
    "notification_window": "the window must be positive, and the relay keeps at most a week "
                           "of history",
    "late_tolerance": "it must not be negative",
}


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Limits of one detector; see the [detector] option of each name for its meaning."""

    OPTION_GROUP: ClassVar[str] = "detector"
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = (("min_interval", "max_interval"),)

    missed_heartbeats: int = _opt("missed_heartbeats")  # hang = this many intervals unheard
    min_interval: float = _opt("min_interval")  # clamp for the guest's heartbeat interval
    max_interval: float = _opt("max_interval")
    min_uptime: float = _opt("min_uptime")  # no hang detection until this long after hello
    max_pause: float = _opt("max_pause")  # a guest pause is clamped to this
    cooldown: float = _opt("cooldown")  # after notifying, no further notification for this long
    max_notifications: int = _opt("max_notifications")  # restart-storm cap per instance ...
    notification_window: float = _opt("notification_window")  # ... per sliding window
    late_tolerance: float = _opt("late_tolerance")  # a deadline seen later: the relay stalled

    def __post_init__(self) -> None:
        bounds.check(self, _WHY)
