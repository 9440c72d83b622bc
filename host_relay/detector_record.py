"""The part of a failure detector that must survive a relay restart.

A :class:`DetectorRecord` is what the relay stores under ``state_path`` when
the detector emits ``Persist`` and hands back as ``Detector(restored=...)``
at start.  Times are on one clock; the store converts between the detector's
monotonic clock and wall time with :meth:`DetectorRecord.shifted`.

:meth:`DetectorRecord.from_json` reads what may be a damaged or hostile file:
unknown keys are ignored (a newer relay may add some), anything else that is
not exactly right raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from iim_protocol.messages import (
    MAX_HEARTBEAT_INTERVAL,
    MAX_NAME_BYTES,
    MIN_HEARTBEAT_INTERVAL,
)

VERSION = 1
#: Most notification times a record keeps: DetectorConfig.max_notifications' upper bound.
MAX_NOTIFIED = 1000
#: Longest reason text kept (bytes): 255 characters of UTF-8, as the detector bounds them.
MAX_TEXT_BYTES = 1024
INCIDENT_KINDS = ("process_failure", "guest_hang")
PAUSE_ORIGINS = ("", "guest", "host")


@dataclasses.dataclass(frozen=True)
class Incident:
    """An open failure: notified (or dropped by the storm cap) and not over yet."""

    kind: str  # "process_failure" | "guest_hang"
    check: Optional[str]
    reason: str
    since: float
    notified: bool  # False: the storm cap dropped the notification


@dataclasses.dataclass(frozen=True)
class DetectorRecord:
    armed: bool = False
    interval: Optional[float] = None
    boot_id: str = ""
    start_id: str = ""
    last_heard: Optional[float] = None
    incident: Optional[Incident] = None
    cooldown_until: Optional[float] = None
    notified_at: tuple[float, ...] = ()
    pause_until: Optional[float] = None  # the guest's pause (pause_origin "guest")
    pause_reason: str = ""
    pause_origin: str = ""
    # The operator's pause (`iim-relay pause`): separate, so neither side ends the other's.
    host_pause_until: Optional[float] = None
    host_pause_reason: str = ""
    # Since when the agent is lost while a witness (qemu-ga) shows the guest runs: the
    # notify_on_agent_lost timeout counts across restarts.  Absent in older records.
    agent_lost_since: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["notified_at"] = list(self.notified_at)
        d["v"] = VERSION
        return d

    @classmethod
    def from_json(cls, d: Any) -> DetectorRecord:
        if not isinstance(d, dict):
            raise ValueError(f"detector record must be an object, not {type(d).__name__}")
        v = d.get("v")
        if type(v) is not int or v != VERSION:
            raise ValueError(f"detector record version must be {VERSION}, not {v!r}")
        inc = d.get("incident")
        if inc is not None:
            if not isinstance(inc, dict):
                raise ValueError("incident must be an object or null")
            kind = inc.get("kind")
            if kind not in INCIDENT_KINDS:
                raise ValueError(f"incident.kind must be one of {INCIDENT_KINDS}")
            check = inc.get("check")
            inc = Incident(
                kind=kind,
                check=None if check is None else _text("incident.check", check, MAX_NAME_BYTES),
                reason=_text("incident.reason", inc.get("reason"), MAX_TEXT_BYTES),
                since=_time("incident.since", inc.get("since")),
                notified=_bool("incident.notified", inc.get("notified")),
            )
        notified = d.get("notified_at", [])
        if not isinstance(notified, list) or len(notified) > MAX_NOTIFIED:
            raise ValueError(f"notified_at must be a list of at most {MAX_NOTIFIED} times")
        interval = _opt_time("interval", d.get("interval"))
        lo, hi = MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL
        if interval is not None and not lo <= interval <= hi:
            raise ValueError(
                f"interval must be within [{MIN_HEARTBEAT_INTERVAL}, {MAX_HEARTBEAT_INTERVAL}]"
            )
        origin = d.get("pause_origin", "")
        if origin not in PAUSE_ORIGINS:
            raise ValueError(f"pause_origin must be one of {PAUSE_ORIGINS}")
        return cls(
            armed=_bool("armed", d.get("armed", False)),
            interval=interval,
            boot_id=_text("boot_id", d.get("boot_id", ""), MAX_NAME_BYTES),
            start_id=_text("start_id", d.get("start_id", ""), MAX_NAME_BYTES),
            last_heard=_opt_time("last_heard", d.get("last_heard")),
            incident=inc,
            cooldown_until=_opt_time("cooldown_until", d.get("cooldown_until")),
            notified_at=tuple(sorted(_time("notified_at", t) for t in notified)),
            pause_until=_opt_time("pause_until", d.get("pause_until")),
            pause_reason=_text("pause_reason", d.get("pause_reason", ""), MAX_TEXT_BYTES),
            pause_origin=origin,
            host_pause_until=_opt_time("host_pause_until", d.get("host_pause_until")),
            host_pause_reason=_text("host_pause_reason", d.get("host_pause_reason", ""),
                                    MAX_TEXT_BYTES),
            agent_lost_since=_opt_time("agent_lost_since", d.get("agent_lost_since")),
        )

    def shifted(self, delta: float) -> DetectorRecord:
        """Every time field + ``delta``: converts between clocks."""

        def add(t: Optional[float]) -> Optional[float]:
            return None if t is None else t + delta

        inc = self.incident
        return dataclasses.replace(
            self,
            last_heard=add(self.last_heard),
            incident=None if inc is None else dataclasses.replace(inc, since=inc.since + delta),
            cooldown_until=add(self.cooldown_until),
            notified_at=tuple(t + delta for t in self.notified_at),
            pause_until=add(self.pause_until),
            host_pause_until=add(self.host_pause_until),
            agent_lost_since=add(self.agent_lost_since),
        )


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be true or false")
    return value


def _time(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be a number")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{field} is out of range") from None
    if not math.isfinite(value):
        raise ValueError(f"{field} must be finite")
    return value


def _opt_time(field: str, value: Any) -> Optional[float]:
    return None if value is None else _time(field, value)


def _text(field: str, value: Any, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes or not value.isprintable():
        raise ValueError(f"{field} must be printable text of at most {max_bytes} bytes")
    return value
