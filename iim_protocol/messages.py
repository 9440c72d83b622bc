"""Messages of the iim wire protocol.

Every message is a small frozen dataclass that validates itself in its
constructor, so an instance that exists is well-formed.  ``to_wire`` turns it
into the msgpack map that goes into a frame; ``message_from_wire`` does the
reverse for hostile input and reports problems as :class:`InvalidMessage`
instead of letting arbitrary exceptions escape.

Everything a guest says about itself is informational: the host identifies an
instance by its channel, never by a field in here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

PROTOCOL_VERSION = 1

# Limits, each with its reason.  They keep the largest possible message
# (a heartbeat naming MAX_CHECKS checks) well inside codec.MAX_BODY.
MAX_NAME_BYTES = 64  # check names, versions, boot ids: one short token in a log line
MAX_TEXT_BYTES = 256  # reasons: one log line, never a dump of guest output
MAX_CHECKS = 32  # checks per agent: 32 x (64 + 16) bytes still fits one frame
MIN_HEARTBEAT_INTERVAL = 0.1  # faster than 10 Hz only costs CPU on both sides
MAX_HEARTBEAT_INTERVAL = 60.0  # slower than a minute makes hang detection useless
MAX_PAUSE_SECONDS = 7 * 24 * 3600.0  # the host clamps further to its own maximum
MAX_SEQ = 2**63 - 1  # msgpack int64; an agent restarts long before it wraps

CHECK_STATES = ("starting", "ok", "failed")
GOODBYE_REASONS = ("stop", "shutdown", "reload")


class InvalidMessage(ValueError):
    """A message that does not satisfy the protocol; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _text(field: str, value: Any, max_bytes: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        kind = type(value).__name__
        raise InvalidMessage("invalid_field", f"{field} must be a string, not {kind}")
    if not value and not empty:
        raise InvalidMessage("invalid_field", f"{field} must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidMessage("invalid_field", f"{field} is longer than {max_bytes} bytes")
    # Guest text ends up in host logs: no control characters, no log-line injection.
    if not value.isprintable():
        raise InvalidMessage("invalid_field", f"{field} contains control characters")
    return value


def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage("invalid_field", f"{field} must be an integer")
    if not lo <= value <= hi:
        raise InvalidMessage("invalid_field", f"{field} must be within [{lo}, {hi}]")
    return value


def _float(field: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMessage("invalid_field", f"{field} must be a number")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        raise InvalidMessage("invalid_field", f"{field} must be within [{lo}, {hi}]") from None
    if math.isnan(value) or not lo <= value <= hi:
        raise InvalidMessage("invalid_field", f"{field} must be within [{lo}, {hi}]")
    return value


def _check_names(field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidMessage("invalid_field", f"{field} must be a list")
    if len(value) > MAX_CHECKS:
        raise InvalidMessage("invalid_field", f"{field} names more than {MAX_CHECKS} checks")
    names = tuple(_text(field, v, MAX_NAME_BYTES) for v in value)
    if len(set(names)) != len(names):
        raise InvalidMessage("invalid_field", f"{field} names a check twice")
    return names


class Message:
    """Base class: ``TYPE`` names the message on the wire."""

    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            body[f.name] = getattr(self, f.name)
        return body

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Message:
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class Hello(Message):
    """First message after the agent starts or the host (re)connects."""

    TYPE: ClassVar[str] = "hello"
    protocol_version: int
    agent_version: str
    boot_id: str
    heartbeat_interval: float
    checks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _int("protocol_version", self.protocol_version, 1, 255)
        _text("agent_version", self.agent_version, MAX_NAME_BYTES)
        _text("boot_id", self.boot_id, MAX_NAME_BYTES)
        object.__setattr__(
            self,
            "heartbeat_interval",
            _float(
                "heartbeat_interval",
                self.heartbeat_interval,
                MIN_HEARTBEAT_INTERVAL,
                MAX_HEARTBEAT_INTERVAL,
            ),
        )
        object.__setattr__(self, "checks", _check_names("checks", self.checks))

    def to_wire(self) -> dict[str, Any]:
        body = super().to_wire()
        body["checks"] = list(self.checks)
        return body


@dataclasses.dataclass(frozen=True)
class Heartbeat(Message):
    """Sent every heartbeat interval: the agent is alive, and how each check is."""

    TYPE: ClassVar[str] = "heartbeat"
    seq: int
    checks: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _int("seq", self.seq, 0, MAX_SEQ)
        checks = self.checks
        if isinstance(checks, Mapping):
            checks = tuple(checks.items())
        if not isinstance(checks, (list, tuple)) or len(checks) > MAX_CHECKS:
            raise InvalidMessage("invalid_field", f"checks must map at most {MAX_CHECKS} names")
        out = []
        for item in checks:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise InvalidMessage("invalid_field", "checks must map names to states")
            name = _text("checks", item[0], MAX_NAME_BYTES)
            if item[1] not in CHECK_STATES:
                raise InvalidMessage("invalid_field", f"check state must be one of {CHECK_STATES}")
            out.append((name, item[1]))
        if len({n for n, _ in out}) != len(out):
            raise InvalidMessage("invalid_field", "checks names a check twice")
        object.__setattr__(self, "checks", tuple(out))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "seq": self.seq, "checks": dict(self.checks)}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Message:
        fields = dict(fields)
        if isinstance(fields.get("checks"), dict):
            fields["checks"] = tuple(fields["checks"].items())
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class Failure(Message):
    """A watched check went down (after its grace period)."""

    TYPE: ClassVar[str] = "failure"
    seq: int
    check: str
    reason: str

    def __post_init__(self) -> None:
        _int("seq", self.seq, 0, MAX_SEQ)
        _text("check", self.check, MAX_NAME_BYTES)
        _text("reason", self.reason, MAX_TEXT_BYTES, empty=True)


@dataclasses.dataclass(frozen=True)
class Recovered(Message):
    """A check that had failed is up again."""

    TYPE: ClassVar[str] = "recovered"
    seq: int
    check: str

    def __post_init__(self) -> None:
        _int("seq", self.seq, 0, MAX_SEQ)
        _text("check", self.check, MAX_NAME_BYTES)


@dataclasses.dataclass(frozen=True)
class Goodbye(Message):
    """The agent stops on purpose: the silence that follows is not a failure."""

    TYPE: ClassVar[str] = "goodbye"
    reason: str = "stop"

    def __post_init__(self) -> None:
        if self.reason not in GOODBYE_REASONS:
            raise InvalidMessage("invalid_field", f"reason must be one of {GOODBYE_REASONS}")


@dataclasses.dataclass(frozen=True)
class Pause(Message):
    """Maintenance inside the guest: suppress notifications for ``duration`` seconds.

    A duration rather than a wall-clock time, because guest and host clocks
    need not agree; the agent re-sends the remaining duration on reconnect.
    """

    TYPE: ClassVar[str] = "pause"
    duration: float
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "duration", _float("duration", self.duration, 0.0, MAX_PAUSE_SECONDS)
        )
        _text("reason", self.reason, MAX_TEXT_BYTES, empty=True)


@dataclasses.dataclass(frozen=True)
class Resume(Message):
    """Maintenance is over before its pause expired."""

    TYPE: ClassVar[str] = "resume"


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, Heartbeat, Failure, Recovered, Goodbye, Pause, Resume)
}


def message_from_wire(obj: Any) -> tuple[Message, int]:
    """Build a message from a decoded msgpack object.

    Returns the message and the number of unknown fields that were ignored (a
    newer agent may send fields this side does not know).  Raises
    :class:`InvalidMessage` for anything else.
    """
    if not isinstance(obj, dict):
        raise InvalidMessage("not_a_map", f"body is a {type(obj).__name__}, not a map")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("no_type", "body has no string 'type'")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise InvalidMessage("unknown_type", f"unknown message type {kind[:32]!r}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    fields = {k: v for k, v in obj.items() if k in known}
    unknown = sum(1 for k in obj if k != "type" and k not in known)
    try:
        return cls.from_fields(fields), unknown
    except TypeError as exc:  # a required field is missing
        raise InvalidMessage("missing_field", str(exc)) from None
