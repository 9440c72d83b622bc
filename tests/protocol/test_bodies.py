"""Frames with a good CRC whose body is not a valid message: consumed, counted, never raised."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from iim_protocol.codec import Decoder, encode
from iim_protocol.messages import MAX_CHECKS, Goodbye, Heartbeat, Hello, Pause, Resume
from tests.protocol.samples import GOOD, GOOD_FRAME, frame_body, frame_obj

HELLO = {
    "type": "hello",
    "protocol_version": 1,
    "agent_version": "0.1.0",
    "boot_id": "b",
    "heartbeat_interval": 1.0,
    "checks": ["sshd"],
}


def _with(base: dict, **changes: Any) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            del out[key]
        else:
            out[key] = value
    return out


_DROP = object()


def _assert_rejected(frame: bytes, reason: str) -> None:
    decoder = Decoder()
    # The bad frame is consumed whole (its CRC was right), the next one decodes.
    assert decoder.feed(frame + GOOD_FRAME) == [GOOD]
    stats = decoder.stats
    assert dict(stats.rejected) == {reason: 1}
    assert stats.bytes_skipped == 0
    assert stats.frames_ok == 1
    assert stats.bytes_received == len(frame) + len(GOOD_FRAME)
    assert decoder.buffered == 0


def test_the_base_hello_body_is_valid() -> None:
    # Guards the cases below: each breaks exactly one thing of a valid body.
    decoder = Decoder()
    assert decoder.feed(frame_obj(HELLO)) == [Hello(1, "0.1.0", "b", 1.0, ("sshd",))]
    assert decoder.stats.unknown_fields == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # the one byte msgpack never uses
        b"\x85",  # a map header with nothing after it
        msgpack.packb(HELLO) + b"\x00",  # trailing data after the object
        msgpack.packb({1: "int key"}),  # strict_map_key
        b"\xd4\xff\x00",  # a timestamp ext of the wrong length
        b"\x91" * 3000 + b"\x90",  # nesting deeper than the unpacker allows
    ],
    ids=["empty", "c1", "short-map", "trailing", "int-key", "bad-timestamp", "deep"],
)
def test_not_msgpack(body: bytes) -> None:
    _assert_rejected(frame_body(body), "bad_body")


@pytest.mark.parametrize("obj", [None, 1, "hello", ["hello"], [HELLO], b"\x00", 1.5], ids=repr)
def test_body_not_a_map(obj: Any) -> None:
    _assert_rejected(frame_obj(obj), "not_a_map")


@pytest.mark.parametrize(
    "obj",
    [{}, _with(HELLO, type=_DROP), _with(HELLO, type=1), _with(HELLO, type=b"hello")],
    ids=["empty", "no-type", "int-type", "bytes-type"],
)
def test_no_type(obj: dict) -> None:
    _assert_rejected(frame_obj(obj), "no_type")


@pytest.mark.parametrize("kind", ["", "HELLO", "hello ", "stats", "x" * 1000])
def test_unknown_type(kind: str) -> None:
    _assert_rejected(frame_obj(_with(HELLO, type=kind)), "unknown_type")


@pytest.mark.parametrize(
    "obj",
    [
        _with(HELLO, boot_id=_DROP),
        _with(HELLO, protocol_version=_DROP),
        {"type": "heartbeat"},
        {"type": "failure", "seq": 1, "check": "a"},
        {"type": "recovered", "check": "a"},
        {"type": "pause", "reason": "x"},
    ],
    ids=["hello-boot_id", "hello-version", "heartbeat-seq", "failure-reason", "rec-seq", "pause"],
)
def test_missing_field(obj: dict) -> None:
    _assert_rejected(frame_obj(obj), "missing_field")


@pytest.mark.parametrize(
    "obj",
    [
        # wrong types
        _with(HELLO, protocol_version="1"),
        _with(HELLO, protocol_version=1.0),
        _with(HELLO, agent_version=1),
        _with(HELLO, boot_id=b"raw"),
        _with(HELLO, heartbeat_interval="1"),
        _with(HELLO, checks="sshd"),
        _with(HELLO, checks={"sshd": "ok"}),
        _with(HELLO, checks=[1]),
        {"type": "heartbeat", "seq": "1", "checks": {}},
        {"type": "heartbeat", "seq": 1, "checks": ["sshd"]},
        {"type": "heartbeat", "seq": 1, "checks": {"sshd": 1}},
        {"type": "heartbeat", "seq": 1, "checks": {"sshd": "down"}},
        {"type": "failure", "seq": 1, "check": None, "reason": ""},
        {"type": "goodbye", "reason": "crash"},
        {"type": "goodbye", "reason": ["stop"]},
        {"type": "pause", "duration": "60"},
        # bool instead of int/float
        _with(HELLO, protocol_version=True),
        _with(HELLO, heartbeat_interval=True),
        {"type": "heartbeat", "seq": False},
        {"type": "pause", "duration": True},
        # out of range
        _with(HELLO, protocol_version=0),
        _with(HELLO, protocol_version=256),
        _with(HELLO, heartbeat_interval=0.05),
        _with(HELLO, heartbeat_interval=61),
        {"type": "heartbeat", "seq": -1},
        {"type": "heartbeat", "seq": 2**64 - 1},
        {"type": "pause", "duration": -1},
        {"type": "pause", "duration": 7 * 24 * 3600 + 1},
        # NaN and infinities
        _with(HELLO, heartbeat_interval=float("nan")),
        _with(HELLO, heartbeat_interval=float("inf")),
        {"type": "pause", "duration": float("nan")},
        {"type": "pause", "duration": float("inf")},
        {"type": "pause", "duration": float("-inf")},
        # control characters and other unprintables in names and text
        _with(HELLO, boot_id="a\nb"),
        _with(HELLO, agent_version="1\x1b[31m"),
        _with(HELLO, checks=["ss\x00hd"]),
        _with(HELLO, checks=["a\u2028b"]),  # line separator
        _with(HELLO, checks=["a\u200bb"]),  # zero-width space (format)
        {"type": "failure", "seq": 1, "check": "a", "reason": "x\ry"},
        {"type": "recovered", "seq": 1, "check": "\t"},
        {"type": "pause", "duration": 1, "reason": "\x7f"},
        {"type": "heartbeat", "seq": 1, "checks": {"a\nb": "ok"}},
        # empty names, names and text over their byte limits
        _with(HELLO, boot_id=""),
        _with(HELLO, agent_version="a" * 65),
        _with(HELLO, checks=["\u00e9" * 33]),  # 33 characters, 66 bytes
        {"type": "failure", "seq": 1, "check": "a", "reason": "r" * 257},
        # too many checks, duplicate names
        _with(HELLO, checks=[f"c{i}" for i in range(MAX_CHECKS + 1)]),
        {"type": "heartbeat", "seq": 1, "checks": {f"c{i}": "ok" for i in range(MAX_CHECKS + 1)}},
        _with(HELLO, checks=["sshd", "sshd"]),
        {"type": "heartbeat", "seq": 1, "checks": [["a", "ok"], ["a", "failed"]]},
    ],
    ids=lambda obj: repr(obj)[:60],
)
def test_invalid_field(obj: dict) -> None:
    _assert_rejected(frame_obj(obj), "invalid_field")


def _packed_map(pairs: list) -> bytes:
    """A msgpack map with the given pairs in order, duplicates included."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(
        msgpack.packb(k) + msgpack.packb(v) for k, v in pairs
    )


def test_duplicate_check_names_in_a_heartbeat_map() -> None:
    checks = _packed_map([("a", "failed"), ("a", "ok")])
    head = _packed_map([("type", "heartbeat"), ("seq", 1)])
    body = bytes([0x83]) + head[1:] + msgpack.packb("checks") + checks  # a 3-entry map
    assert msgpack.unpackb(body) == {"type": "heartbeat", "seq": 1, "checks": {"a": "ok"}}
    _assert_rejected(frame_body(body), "duplicate_key")


def test_duplicate_top_level_key() -> None:
    body = _packed_map([("type", "goodbye"), ("type", "resume")])
    _assert_rejected(frame_body(body), "duplicate_key")


def test_unknown_fields_are_skipped_and_counted() -> None:
    obj = _with(HELLO, zone="az1", features=["pause-v2"], nested={"a": [1, 2.5, None]})
    obj[b"binary-key"] = 1
    frame = frame_obj(obj)
    decoder = Decoder()
    assert decoder.feed(frame) == [Hello(1, "0.1.0", "b", 1.0, ("sshd",))]
    assert decoder.stats.unknown_fields == 4
    assert decoder.stats.frames_ok == 1
    assert dict(decoder.stats.rejected) == {}


@pytest.mark.parametrize(
    "msg", [Heartbeat(5, {"a": "ok"}), Goodbye("reload"), Pause(30.0, "x"), Resume()], ids=repr
)
def test_unknown_fields_in_every_type(msg) -> None:
    wire = msg.to_wire()
    wire["future_field"] = {"anything": [1, "two"]}
    wire["another"] = None
    decoder = Decoder()
    assert decoder.feed(frame_obj(wire) + encode(msg)) == [msg, msg]
    assert decoder.stats.unknown_fields == 2
    assert decoder.stats.frames_ok == 2


def test_unknown_type_then_known_type_keeps_going() -> None:
    # A newer agent's new message type is skipped; its next heartbeat still counts.
    decoder = Decoder()
    frames = frame_obj({"type": "metrics", "cpu": 0.5}) + GOOD_FRAME
    assert decoder.feed(frames) == [GOOD]
    assert dict(decoder.stats.rejected) == {"unknown_type": 1}
    assert decoder.stats.unknown_fields == 0
