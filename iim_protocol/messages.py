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
import functools
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Optional

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


def _optional_name(field: str, value: Any) -> str:
    # "" on the dataclass means "absent" (a 0.1.0 peer); on the wire, a present
    # field must be a real name.
    return value if value == "" else _text(field, value, MAX_NAME_BYTES)


def _optional_interval(field: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    return _float(field, value, MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL)


# A field of a message that is not on the wire by itself (``pause_known``).
_LOCAL = {"wire": False}


@dataclasses.dataclass(frozen=True)
class PauseState:
    """The pause in force as the agent sees it: ``remaining`` seconds, ``reason``.

    A duration, not a wall-clock end, for the same reason as :class:`Pause`.
    """

    remaining: float
    reason: str = ""

    WIRE_FIELDS: ClassVar[tuple[str, ...]] = ("remaining", "reason")

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "remaining", _float("pause.remaining", self.remaining, 0.0, MAX_PAUSE_SECONDS)
        )
        _text("pause.reason", self.reason, MAX_TEXT_BYTES, empty=True)

    def to_wire(self) -> dict[str, Any]:
        return {"remaining": self.remaining, "reason": self.reason}

    @classmethod
    def from_wire(cls, value: Any) -> Optional[PauseState]:
        """nil -> None (not paused); a map -> PauseState; anything else is invalid."""
        if value is None or isinstance(value, PauseState):
            return value
        if not isinstance(value, Mapping):
            raise InvalidMessage("invalid_field", "pause must be nil or a map")
        if "remaining" not in value:
            raise InvalidMessage("invalid_field", "pause has no remaining")
        return cls(**{k: value[k] for k in cls.WIRE_FIELDS if k in value})

    @classmethod
    def unknown_keys(cls, value: Any) -> int:
        """Keys of a wire pause map that this version does not know (ignored, counted)."""
        if not isinstance(value, Mapping):
            return 0
        return sum(1 for k in value if k not in cls.WIRE_FIELDS)


def _pause_level(message: Any) -> None:
    """Validate ``pause``/``pause_known``: a pause that is given is known."""
    pause = PauseState.from_wire(message.pause)
    object.__setattr__(message, "pause", pause)
    if not isinstance(message.pause_known, bool):
        raise InvalidMessage("invalid_field", "pause_known must be a boolean")
    if pause is not None:
        object.__setattr__(message, "pause_known", True)


_LEVEL_VALUES = ("interval", "boot_id", "start_id")


def _level_to_wire(message: Any, body: dict[str, Any]) -> None:
    """Drop the level fields a message does not know, so it encodes as 0.1.0 did."""
    for name in _LEVEL_VALUES:
        if name in body and body[name] in (None, ""):
            del body[name]
    if message.pause_known:
        body["pause"] = None if message.pause is None else message.pause.to_wire()
    else:
        del body["pause"]


def _level_from_wire(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A level field on the wire must hold a value; a ``pause`` key, even nil, is known."""
    out = dict(fields)
    for name in _LEVEL_VALUES:
        if name in out and out[name] in (None, ""):
            raise InvalidMessage("invalid_field", f"{name} is present but empty")
    if "pause" in out:
        out["pause_known"] = True
    return out


@functools.cache
def _wire_fields(cls: type) -> tuple[str, ...]:
    # A dataclass's fields are fixed when its class is made, so this is
    # computed once per class: it was a fifth of decoding a heartbeat.
    return tuple(
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.metadata.get("wire", True)
    )


class Message:
    """Base class: ``TYPE`` names the message on the wire."""

    TYPE: ClassVar[str] = ""

    @classmethod
    def wire_fields(cls) -> tuple[str, ...]:
        """The field names that travel on the wire (not local flags like ``pause_known``)."""
        return _wire_fields(cls)

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.TYPE}
        for name in self.wire_fields():
            body[name] = getattr(self, name)
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
    # Since 0.2 (absent from a 0.1.0 agent: "" / None with pause_known False).
    start_id: str = ""
    pause: Optional[PauseState] = None
    pause_known: bool = dataclasses.field(default=False, metadata=_LOCAL)

    def __post_init__(self) -> None:
        _int("protocol_version", self.protocol_version, 1, 255)
        _text("agent_version", self.agent_version, MAX_NAME_BYTES)
        _text("boot_id", self.boot_id, MAX_NAME_BYTES)
        _optional_name("start_id", self.start_id)
        _pause_level(self)
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
        _level_to_wire(self, body)
        return body

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Message:
        return cls(**_level_from_wire(fields))


@dataclasses.dataclass(frozen=True)
class Heartbeat(Message):
    """Sent every heartbeat interval: the agent is alive, and how each check is."""

    TYPE: ClassVar[str] = "heartbeat"
    seq: int
    checks: tuple[tuple[str, str], ...] = ()
    # The agent's whole state, since 0.2: a >= 0.2 agent always sends all of
    # these, a 0.1.0 agent none (None / "" / pause_known False).
    interval: Optional[float] = None
    boot_id: str = ""
    start_id: str = ""
    pause: Optional[PauseState] = None
    pause_known: bool = dataclasses.field(default=False, metadata=_LOCAL)

    def __post_init__(self) -> None:
        _int("seq", self.seq, 0, MAX_SEQ)
        object.__setattr__(self, "interval", _optional_interval("interval", self.interval))
        _optional_name("boot_id", self.boot_id)
        _optional_name("start_id", self.start_id)
        _pause_level(self)
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
        body = super().to_wire()
        body["checks"] = dict(self.checks)
        _level_to_wire(self, body)
        return body

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Message:
        fields = _level_from_wire(fields)
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


@dataclasses.dataclass(frozen=True)
class Sync(Message):
    """Host to guest: "tell me everything" (hello, heartbeat, a failure per failed check).

    The relay writes one on every (re)connect of a channel.  The only message
    the host sends; a 0.1.0 agent never reads it.
    """

    TYPE: ClassVar[str] = "sync"


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, Heartbeat, Failure, Recovered, Goodbye, Pause, Resume, Sync)
}
# Who may send what.  Both decoders build every type; each side acts only on
# its own set and counts the rest as ignored.
GUEST_TO_HOST = frozenset(
    ("hello", "heartbeat", "failure", "recovered", "goodbye", "pause", "resume")
)
HOST_TO_GUEST = frozenset(("sync",))


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
    known = cls.wire_fields()
    fields = {k: v for k, v in obj.items() if k in known}
    unknown = sum(1 for k in obj if k != "type" and k not in known)
    unknown += PauseState.unknown_keys(fields.get("pause"))
    try:
        return cls.from_fields(fields), unknown
    except TypeError as exc:  # a required field is missing
        raise InvalidMessage("missing_field", str(exc)) from None
