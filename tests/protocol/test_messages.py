"""Constructors refuse bad values with InvalidMessage; encode() accepts everything valid."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from iim_protocol.codec import HEADER, MAX_BODY, TRAILER, Decoder, EncodeError, encode
from iim_protocol.messages import (
    MAX_CHECKS,
    MAX_HEARTBEAT_INTERVAL,
    MAX_PAUSE_SECONDS,
    MAX_SEQ,
    MIN_HEARTBEAT_INTERVAL,
    Failure,
    Goodbye,
    Heartbeat,
    Hello,
    InvalidMessage,
    Message,
    Pause,
    Recovered,
    Resume,
    message_from_wire,
)
from tests.protocol.samples import (
    LARGEST_HEARTBEAT,
    LARGEST_HELLO,
    LONG_4B,
    LONG_TEXT,
    SAMPLE_IDS,
    SAMPLE_MESSAGES,
    max_check_names,
)

NAN, INF = float("nan"), float("inf")


def _hello(**kw: Any) -> Hello:
    args = dict(protocol_version=1, agent_version="1", boot_id="b", heartbeat_interval=1.0)
    args.update(kw)
    return Hello(**args)


BAD: list = [
    # Hello
    lambda: _hello(protocol_version=0),
    lambda: _hello(protocol_version=256),
    lambda: _hello(protocol_version=True),
    lambda: _hello(protocol_version=1.0),
    lambda: _hello(agent_version=""),
    lambda: _hello(agent_version=None),
    lambda: _hello(agent_version="a" * 65),
    lambda: _hello(boot_id="x\n"),
    lambda: _hello(boot_id="\ud800"),  # a lone surrogate
    lambda: _hello(heartbeat_interval=MIN_HEARTBEAT_INTERVAL / 2),
    lambda: _hello(heartbeat_interval=MAX_HEARTBEAT_INTERVAL + 0.001),
    lambda: _hello(heartbeat_interval=NAN),
    lambda: _hello(heartbeat_interval=INF),
    lambda: _hello(heartbeat_interval=False),
    lambda: _hello(heartbeat_interval="1"),
    lambda: _hello(heartbeat_interval=10**400),  # int beyond float range
    lambda: _hello(checks="abc"),
    lambda: _hello(checks=[""]),
    lambda: _hello(checks=["a", "a"]),
    lambda: _hello(checks=[f"c{i}" for i in range(MAX_CHECKS + 1)]),
    lambda: _hello(checks=[LONG_4B + "x"]),
    # Heartbeat
    lambda: Heartbeat(-1),
    lambda: Heartbeat(MAX_SEQ + 1),
    lambda: Heartbeat(True),
    lambda: Heartbeat(1.0),
    lambda: Heartbeat(1, {"a": "up"}),
    lambda: Heartbeat(1, {"a": None}),
    lambda: Heartbeat(1, {"": "ok"}),
    lambda: Heartbeat(1, {1: "ok"}),
    lambda: Heartbeat(1, [("a", "ok"), ("a", "failed")]),
    lambda: Heartbeat(1, [("a", "ok", "extra")]),
    lambda: Heartbeat(1, ["ab"]),
    lambda: Heartbeat(1, "ab"),
    lambda: Heartbeat(1, {f"c{i}": "ok" for i in range(MAX_CHECKS + 1)}),
    # Failure / Recovered
    lambda: Failure(1, "", "r"),
    lambda: Failure(1, "a", LONG_TEXT + "x"),
    lambda: Failure(1, "a", None),
    lambda: Failure(-1, "a", ""),
    lambda: Failure(1, "a\x00", ""),
    lambda: Recovered(1, ""),
    lambda: Recovered(1, "\u2029"),
    lambda: Recovered(None, "a"),
    # Goodbye
    lambda: Goodbye("crash"),
    lambda: Goodbye(""),
    lambda: Goodbye(None),
    # Pause
    lambda: Pause(-0.001),
    lambda: Pause(MAX_PAUSE_SECONDS + 1),
    lambda: Pause(NAN),
    lambda: Pause(-INF),
    lambda: Pause(True),
    lambda: Pause("60"),
    lambda: Pause(10**400),
    lambda: Pause(60, "a\tb"),
    lambda: Pause(60, LONG_TEXT + "x"),
]


@pytest.mark.parametrize("make", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_constructor_rejects_with_invalid_message(make: Callable[[], Message]) -> None:
    with pytest.raises(InvalidMessage) as info:
        make()
    assert info.value.reason == "invalid_field"
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("invalid_field: ")


def test_messages_are_frozen() -> None:
    msg = Heartbeat(1, {"a": "ok"})
    with pytest.raises(AttributeError):
        msg.seq = 2  # type: ignore[misc]


def test_constructors_normalise() -> None:
    assert _hello(heartbeat_interval=5).heartbeat_interval == 5.0
    assert isinstance(_hello(heartbeat_interval=5).heartbeat_interval, float)
    assert _hello(checks=["a", "b"]).checks == ("a", "b")
    assert Heartbeat(1, {"a": "ok", "b": "failed"}).checks == (("a", "ok"), ("b", "failed"))
    assert Heartbeat(1, [["a", "ok"]]).checks == (("a", "ok"),)
    assert isinstance(Pause(60).duration, float)


def test_limits_themselves_are_valid() -> None:
    assert Heartbeat(MAX_SEQ).seq == MAX_SEQ
    assert _hello(heartbeat_interval=MIN_HEARTBEAT_INTERVAL).heartbeat_interval == 0.1
    assert _hello(heartbeat_interval=MAX_HEARTBEAT_INTERVAL).heartbeat_interval == 60.0
    assert Pause(0).duration == 0.0
    assert Pause(MAX_PAUSE_SECONDS).duration == MAX_PAUSE_SECONDS
    assert len(LARGEST_HELLO.checks) == MAX_CHECKS
    assert len(LARGEST_HEARTBEAT.checks) == MAX_CHECKS
    assert Failure(0, "a", "").reason == ""


@pytest.mark.parametrize("msg", SAMPLE_MESSAGES, ids=SAMPLE_IDS)
def test_encode_accepts_every_sample(msg: Message) -> None:
    frame = encode(msg)
    assert len(frame) - HEADER.size - TRAILER.size <= MAX_BODY


def test_largest_possible_messages_fit_max_body() -> None:
    # Every field at its byte limit: 32 checks of 64-byte names, in the
    # longest state, a 64-bit seq, the longest interval (a float64 anyway).
    for msg in (LARGEST_HELLO, LARGEST_HEARTBEAT):
        body = len(encode(msg)) - HEADER.size - TRAILER.size
        assert body <= MAX_BODY
        # The margin the limits promise ("well inside"): at least a quarter free.
        assert body < MAX_BODY * 3 // 4, (msg.TYPE, body)
    # Names of 4-byte characters are no larger on the wire than ASCII ones:
    # the limit is in bytes.
    ascii_names = tuple("n" * 62 + f"{i:02d}" for i in range(MAX_CHECKS))
    assert len(encode(_hello(checks=ascii_names))) == len(encode(_hello(checks=max_check_names())))


def test_encode_refuses_an_oversized_body() -> None:
    # Only a message bypassing validation can get there; encode() still refuses.
    class Huge(Resume):
        def to_wire(self) -> dict:
            return {"type": "resume", "blob": "x" * MAX_BODY}

    with pytest.raises(EncodeError):
        encode(Huge())


def test_message_from_wire_returns_unknown_field_count() -> None:
    msg, unknown = message_from_wire({"type": "goodbye", "reason": "stop", "x": 1, "y": 2})
    assert msg == Goodbye("stop")
    assert unknown == 2


@pytest.mark.parametrize(
    "obj, reason",
    [
        ([], "not_a_map"),
        ({}, "no_type"),
        ({"type": "nope"}, "unknown_type"),
        ({"type": "recovered", "seq": 1}, "missing_field"),
        ({"type": "recovered", "seq": 1, "check": ""}, "invalid_field"),
    ],
)
def test_message_from_wire_raises_only_invalid_message(obj: Any, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        message_from_wire(obj)
    assert info.value.reason == reason


def test_decoder_stats_as_dict() -> None:
    decoder = Decoder()
    decoder.feed(b"xx" + encode(Resume()) + encode(Resume())[:-1] + b"\x00")
    assert decoder.stats.as_dict() == {
        "bytes_received": 2 + 22 + 22,
        "bytes_skipped": 2 + 22,
        "frames_ok": 1,
        "frames_rejected": 1,
        "unknown_fields": 0,
        "rejected": {"bad_crc": 1},
    }
