"""The level fields of 0.2 (start_id, interval, boot_id, pause) and the host's `sync`.

A 0.1.0 body (no level fields) decodes with the fields defaulted; a pause that
is absent (unknown) is told apart from a nil one (not paused); a present field
must hold a valid value.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import msgpack
import pytest

from iim_protocol.codec import HEADER, MAX_BODY, TRAILER, Decoder, encode
from iim_protocol.messages import (
    GUEST_TO_HOST,
    HOST_TO_GUEST,
    MAX_PAUSE_SECONDS,
    MESSAGE_TYPES,
    Heartbeat,
    Hello,
    InvalidMessage,
    Message,
    PauseState,
    Sync,
    message_from_wire,
)
from tests.protocol.samples import (
    GOOD,
    GOOD_FRAME,
    LARGEST_HEARTBEAT,
    LARGEST_HELLO,
    LONG_4B,
    LONG_TEXT,
    MAX_CHECKS,
    MAX_NAME_BYTES,
    MAX_TEXT_BYTES,
    frame_body,
    frame_obj,
)

HELLO_010 = {
    "type": "hello",
    "protocol_version": 1,
    "agent_version": "0.1.0",
    "boot_id": "b",
    "heartbeat_interval": 1.0,
    "checks": ["sshd"],
}
HEARTBEAT_010 = {"type": "heartbeat", "seq": 5, "checks": {"sshd": "failed"}}
LEVEL = {"interval": 2.0, "boot_id": "b", "start_id": "s1"}


def decode_one(obj: Any) -> tuple[Message, Decoder]:
    decoder = Decoder()
    out = decoder.feed(frame_obj(obj))
    assert len(out) == 1, dict(decoder.stats.rejected)
    return out[0], decoder


def rejected(obj: Any) -> dict[str, int]:
    decoder = Decoder()
    # The bad frame is consumed (its CRC is right) and the next one decodes.
    assert decoder.feed(frame_obj(obj) + GOOD_FRAME) == [GOOD]
    assert decoder.stats.bytes_skipped == 0
    return dict(decoder.stats.rejected)


# -- 0.1.0 bodies: new fields defaulted -------------------------------------------


def test_a_010_hello_has_no_start_id_and_an_unknown_pause() -> None:
    msg, decoder = decode_one(HELLO_010)
    assert isinstance(msg, Hello)
    assert (msg.start_id, msg.pause, msg.pause_known) == ("", None, False)
    assert decoder.stats.unknown_fields == 0
    assert msg.to_wire() == HELLO_010  # and it encodes back to the 0.1.0 body


def test_a_010_heartbeat_has_no_level() -> None:
    msg, decoder = decode_one(HEARTBEAT_010)
    assert isinstance(msg, Heartbeat)
    assert (msg.interval, msg.boot_id, msg.start_id) == (None, "", "")
    assert (msg.pause, msg.pause_known) == (None, False)
    assert msg.checks == (("sshd", "failed"),)
    assert decoder.stats.unknown_fields == 0
    assert msg.to_wire() == HEARTBEAT_010


# -- absent vs nil vs given pause ------------------------------------------------


@pytest.mark.parametrize("base", [HELLO_010, HEARTBEAT_010], ids=["hello", "heartbeat"])
def test_pause_absent_nil_and_given_are_three_different_things(base: dict) -> None:
    absent, _ = decode_one(base)
    nil, _ = decode_one(dict(base, pause=None))
    given, _ = decode_one(dict(base, pause={"remaining": 90, "reason": "upgrade"}))
    assert (absent.pause, absent.pause_known) == (None, False)  # type: ignore[attr-defined]
    assert (nil.pause, nil.pause_known) == (None, True)  # type: ignore[attr-defined]
    assert given.pause == PauseState(90.0, "upgrade")  # type: ignore[attr-defined]
    assert given.pause_known  # type: ignore[attr-defined]
    assert len({absent, nil, given}) == 3
    # Each encodes back to what it was: absent stays absent, nil stays nil.
    assert "pause" not in absent.to_wire()
    assert nil.to_wire()["pause"] is None
    assert given.to_wire()["pause"] == {"remaining": 90.0, "reason": "upgrade"}


def test_a_given_pause_is_known_whatever_pause_known_says() -> None:
    hb = Heartbeat(1, pause=PauseState(5))
    assert hb.pause_known
    assert hb == Heartbeat(1, pause=PauseState(5), pause_known=True)
    assert Heartbeat(1, pause={"remaining": 5}).pause == PauseState(5.0, "")
    assert Heartbeat(1, pause_known=True) != Heartbeat(1)


def test_pause_reason_defaults_to_empty() -> None:
    msg, _ = decode_one(dict(HEARTBEAT_010, pause={"remaining": 0}))
    assert msg.pause == PauseState(0.0, "")  # type: ignore[attr-defined]


def test_pause_known_is_not_a_wire_field() -> None:
    # A guest cannot set the flag by itself: the key is unknown, counted, ignored.
    msg, decoder = decode_one(dict(HEARTBEAT_010, pause_known=True))
    assert msg.pause_known is False  # type: ignore[attr-defined]
    assert decoder.stats.unknown_fields == 1
    assert "pause_known" not in Heartbeat(1, pause_known=True).to_wire()
    assert "pause_known" not in Hello.wire_fields()


def test_unknown_keys_inside_pause_are_counted_and_ignored() -> None:
    pause = {"remaining": 3.0, "reason": "r", "until": 123, "by": "x"}
    msg, decoder = decode_one(dict(HEARTBEAT_010, pause=pause, later=1))
    assert msg.pause == PauseState(3.0, "r")  # type: ignore[attr-defined]
    assert decoder.stats.unknown_fields == 3


# -- a full 0.2 heartbeat --------------------------------------------------------


def test_a_level_heartbeat_round_trips() -> None:
    body = dict(HEARTBEAT_010, **LEVEL, pause={"remaining": 1.5, "reason": ""})
    msg, decoder = decode_one(body)
    assert msg == Heartbeat(5, {"sshd": "failed"}, 2.0, "b", "s1", PauseState(1.5, ""))
    assert decoder.stats.unknown_fields == 0
    assert msgpack.unpackb(encode(msg)[HEADER.size : -TRAILER.size]) == body


def test_interval_is_normalised_to_float() -> None:
    msg, _ = decode_one(dict(HEARTBEAT_010, interval=3))
    assert msg.interval == 3.0 and isinstance(msg.interval, float)  # type: ignore[attr-defined]


# -- present fields must be valid -------------------------------------------------

BAD_WIRE = [
    dict(HEARTBEAT_010, interval=None),
    dict(HEARTBEAT_010, interval=0.01),
    dict(HEARTBEAT_010, interval=61),
    dict(HEARTBEAT_010, interval=float("nan")),
    dict(HEARTBEAT_010, interval=True),
    dict(HEARTBEAT_010, interval="2"),
    dict(HEARTBEAT_010, boot_id=""),
    dict(HEARTBEAT_010, boot_id=None),
    dict(HEARTBEAT_010, boot_id="a" * (MAX_NAME_BYTES + 1)),
    dict(HEARTBEAT_010, boot_id="a\nb"),
    dict(HEARTBEAT_010, start_id=""),
    dict(HEARTBEAT_010, start_id=7),
    dict(HEARTBEAT_010, start_id=LONG_4B + "x"),
    dict(HEARTBEAT_010, pause=0),
    dict(HEARTBEAT_010, pause=False),
    dict(HEARTBEAT_010, pause="paused"),
    dict(HEARTBEAT_010, pause=[600, "r"]),
    dict(HEARTBEAT_010, pause={}),
    dict(HEARTBEAT_010, pause={"reason": "no remaining"}),
    dict(HEARTBEAT_010, pause={"remaining": -1}),
    dict(HEARTBEAT_010, pause={"remaining": MAX_PAUSE_SECONDS + 1}),
    dict(HEARTBEAT_010, pause={"remaining": float("inf")}),
    dict(HEARTBEAT_010, pause={"remaining": None}),
    dict(HEARTBEAT_010, pause={"remaining": 1, "reason": None}),
    dict(HEARTBEAT_010, pause={"remaining": 1, "reason": "\x1b[31m"}),
    dict(HEARTBEAT_010, pause={"remaining": 1, "reason": LONG_TEXT + "x"}),
    dict(HELLO_010, start_id=""),
    dict(HELLO_010, start_id=b"bytes"),
    dict(HELLO_010, pause=1800.0),
    dict(HELLO_010, pause={"remaining": "10"}),
]


@pytest.mark.parametrize("body", BAD_WIRE, ids=[f"bad{i}" for i in range(len(BAD_WIRE))])
def test_a_present_level_field_must_be_valid(body: dict) -> None:
    assert rejected(body) == {"invalid_field": 1}
    with pytest.raises(InvalidMessage) as info:
        message_from_wire(body)
    assert info.value.reason == "invalid_field"


def test_a_pause_map_with_a_duplicate_key_is_refused() -> None:
    # msgpack would keep the last value; the decoder refuses the frame instead.
    pack = msgpack.packb
    pause = b"\x82" + pack("remaining") + pack(1) + pack("remaining") + pack(2)
    body = b"\x83" + pack("type") + pack("heartbeat") + pack("seq") + pack(1)
    body += pack("pause") + pause
    decoder = Decoder()
    assert decoder.feed(frame_body(body) + GOOD_FRAME) == [GOOD]
    assert dict(decoder.stats.rejected) == {"duplicate_key": 1}


BAD_CONSTRUCTED: list[Callable[[], Any]] = [
    lambda: PauseState(-0.5),
    lambda: PauseState(float("nan")),
    lambda: PauseState(True),
    lambda: PauseState(1, None),
    lambda: PauseState(1, "a\tb"),
    lambda: Heartbeat(1, interval=0),
    lambda: Heartbeat(1, interval=float("inf")),
    lambda: Heartbeat(1, boot_id=None),
    lambda: Heartbeat(1, start_id="x" * 65),
    lambda: Heartbeat(1, pause=5),
    lambda: Heartbeat(1, pause_known=1),
    lambda: Hello(1, "a", "b", 1.0, start_id=None),
    lambda: Hello(1, "a", "b", 1.0, pause="x"),
    lambda: Hello(1, "a", "b", 1.0, pause_known="yes"),
]


@pytest.mark.parametrize(
    "make", BAD_CONSTRUCTED, ids=[f"bad{i}" for i in range(len(BAD_CONSTRUCTED))]
)
def test_constructors_reject_bad_level_values(make: Callable[[], Any]) -> None:
    with pytest.raises(InvalidMessage) as info:
        make()
    assert info.value.reason == "invalid_field"


def test_pause_limits_are_valid() -> None:
    assert PauseState(0).remaining == 0.0
    assert PauseState(MAX_PAUSE_SECONDS).remaining == MAX_PAUSE_SECONDS
    assert PauseState(1, LONG_TEXT).reason == LONG_TEXT


# -- sizes ----------------------------------------------------------------------


def test_the_largest_level_messages_still_fit_max_body() -> None:
    # 32 checks of 64-byte names in state "starting", a 64-bit seq, every level
    # field at its byte limit and a pause reason of MAX_TEXT_BYTES.
    assert len(LARGEST_HEARTBEAT.checks) == MAX_CHECKS
    assert LARGEST_HEARTBEAT.pause is not None
    assert len(LARGEST_HEARTBEAT.pause.reason.encode()) == MAX_TEXT_BYTES
    for msg in (LARGEST_HELLO, LARGEST_HEARTBEAT):
        body = len(encode(msg)) - HEADER.size - TRAILER.size
        assert body < MAX_BODY * 3 // 4, (msg.TYPE, body)
        (decoded,) = Decoder().feed(encode(msg))
        assert decoded == msg


# -- sync -----------------------------------------------------------------------


def test_sync_is_the_host_message() -> None:
    assert MESSAGE_TYPES["sync"] is Sync
    assert HOST_TO_GUEST == {"sync"}
    assert GUEST_TO_HOST | HOST_TO_GUEST == set(MESSAGE_TYPES)
    assert not GUEST_TO_HOST & HOST_TO_GUEST
    assert Sync().to_wire() == {"type": "sync"}
    assert len(encode(Sync())) == 20


def test_sync_skips_unknown_fields() -> None:
    msg, decoder = decode_one({"type": "sync", "epoch": 3, "why": "reconnect"})
    assert msg == Sync()
    assert decoder.stats.unknown_fields == 2


def test_wire_fields_are_each_types_own_and_stable() -> None:
    # wire_fields() is cached per class (it was a fifth of decoding a
    # heartbeat): each type still gets its own names, the same on every call.
    for cls in MESSAGE_TYPES.values():
        names = tuple(f.name for f in dataclasses.fields(cls) if f.name != "pause_known")
        assert cls.wire_fields() == names
        assert cls.wire_fields() is cls.wire_fields()
    assert Hello.wire_fields() != Heartbeat.wire_fields()
