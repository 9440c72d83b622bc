"""Property tests: round trips for generated messages, and the decoder on hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iim_protocol.codec import HEADER, MAGIC, MAX_BODY, MAX_FRAME, TRAILER, Decoder, encode
from iim_protocol.messages import (
    CHECK_STATES,
    GOODBYE_REASONS,
    MAX_CHECKS,
    MAX_HEARTBEAT_INTERVAL,
    MAX_NAME_BYTES,
    MAX_PAUSE_SECONDS,
    MAX_SEQ,
    MAX_TEXT_BYTES,
    MESSAGE_TYPES,
    MIN_HEARTBEAT_INTERVAL,
    Failure,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    Pause,
    PauseState,
    Recovered,
    Resume,
    Sync,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Printable as str.isprintable() means it: no category C (controls, format,
# surrogates, private use, unassigned) and no category Z except the ASCII space.
_chars = st.one_of(
    st.characters(codec="utf-8", exclude_categories=("C", "Z")),
    st.just(" "),
)


def _fit(text: str, max_bytes: int) -> str:
    while len(text.encode("utf-8")) > max_bytes:
        text = text[:-1]
    return text


def texts(max_bytes: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return (
        st.text(_chars, min_size=min_size, max_size=max_bytes)
        .map(lambda t: _fit(t, max_bytes))
        .filter(lambda t: len(t) >= min_size and t.isprintable())
    )


names = texts(MAX_NAME_BYTES, min_size=1)
seqs = st.integers(0, MAX_SEQ)
intervals = st.one_of(
    st.floats(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL),
    st.integers(1, int(MAX_HEARTBEAT_INTERVAL)),
)
# The pause level: absent (0.1.0), nil (not paused) or a PauseState.
pause_levels = st.one_of(
    st.just({}),
    st.just({"pause": None, "pause_known": True}),
    st.builds(
        PauseState,
        remaining=st.one_of(st.floats(0.0, MAX_PAUSE_SECONDS), st.integers(0, 3600)),
        reason=texts(MAX_TEXT_BYTES),
    ).map(lambda p: {"pause": p}),
)

hellos = st.builds(
    lambda pause, **kw: Hello(**kw, **pause),
    pause=pause_levels,
    protocol_version=st.integers(1, 255),
    agent_version=names,
    boot_id=names,
    heartbeat_interval=intervals,
    checks=st.lists(names, max_size=MAX_CHECKS, unique=True).map(tuple),
    start_id=st.one_of(st.just(""), names),
)
heartbeats = st.builds(
    lambda pause, **kw: Heartbeat(**kw, **pause),
    pause=pause_levels,
    seq=seqs,
    checks=st.dictionaries(names, st.sampled_from(CHECK_STATES), max_size=MAX_CHECKS),
    interval=st.one_of(st.none(), intervals),
    boot_id=st.one_of(st.just(""), names),
    start_id=st.one_of(st.just(""), names),
)
failures = st.builds(Failure, seq=seqs, check=names, reason=texts(MAX_TEXT_BYTES))
recovereds = st.builds(Recovered, seq=seqs, check=names)
goodbyes = st.builds(Goodbye, reason=st.sampled_from(GOODBYE_REASONS))
pauses = st.builds(
    Pause,
    duration=st.one_of(st.floats(0.0, MAX_PAUSE_SECONDS), st.integers(0, int(MAX_PAUSE_SECONDS))),
    reason=texts(MAX_TEXT_BYTES),
)
resumes = st.just(Resume())
syncs = st.just(Sync())
STRATEGIES = {
    "hello": hellos,
    "heartbeat": heartbeats,
    "failure": failures,
    "recovered": recovereds,
    "goodbye": goodbyes,
    "pause": pauses,
    "resume": resumes,
    "sync": syncs,
}
assert set(STRATEGIES) == set(MESSAGE_TYPES)
messages = st.one_of(*STRATEGIES.values())

# Garbage that looks like frames: the magic, headers claiming any length,
# and plain bytes.
fake_headers = st.builds(
    lambda version, length, rest: MAGIC + bytes([version]) + length.to_bytes(2, "big") + rest,
    st.sampled_from([1, 1, 1, 0, 2, 0xC1]),
    st.one_of(st.integers(0, 64), st.integers(0, 0xFFFF), st.just(MAX_BODY)),
    st.binary(max_size=64),
)
garbage = st.one_of(
    st.binary(min_size=1, max_size=200),
    fake_headers,
    st.lists(st.sampled_from([MAGIC, b"\xc1", b"\x49", b"\x01", b"\x00"]), min_size=1).map(
        b"".join
    ),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def feed_checked(decoder: Decoder, chunks: list[bytes]) -> list[Message]:
    out: list[Message] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        assert decoder.buffered < MAX_FRAME
    return out


@FAST
@given(msg=messages)
def test_every_valid_message_encodes_within_max_body(msg: Message) -> None:
    frame = encode(msg)
    assert len(frame) - HEADER.size - TRAILER.size <= MAX_BODY
    assert frame[:2] == MAGIC


@SLOW
@given(
    msgs=st.lists(messages, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10**6), max_size=20),
)
def test_round_trip_in_any_chunking(msgs: list[Message], cuts: list[int]) -> None:
    data = b"".join(encode(m) for m in msgs)
    decoder = Decoder()
    out = feed_checked(decoder, chunked(data, cuts))
    assert out == msgs
    assert [type(m) for m in out] == [type(m) for m in msgs]
    stats = decoder.stats
    assert stats.frames_ok == len(msgs)
    assert stats.bytes_received == len(data)
    assert stats.bytes_skipped == 0 and dict(stats.rejected) == {}
    assert decoder.buffered == 0


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_each_type_byte_by_byte(kind: str, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[kind])
    frame = encode(msg)
    decoder = Decoder()
    out = feed_checked(decoder, [frame[i : i + 1] for i in range(len(frame))])
    assert out == [msg]
    assert type(out[0]) is MESSAGE_TYPES[kind]
    assert encode(out[0]) == frame


@SLOW
@given(data=st.binary(max_size=3 * MAX_FRAME), cuts=st.lists(st.integers(0, 10**6), max_size=30))
def test_arbitrary_bytes_never_raise_and_stay_bounded(data: bytes, cuts: list[int]) -> None:
    decoder = Decoder()
    out = feed_checked(decoder, chunked(data, cuts))
    # Random bytes do not carry a good CRC (and if one ever did, it would be
    # a real frame, so it would also have been consumed).
    assert out == []
    stats = decoder.stats
    assert stats.bytes_received == len(data)
    assert stats.bytes_skipped + decoder.buffered == len(data)
    assert stats.frames_ok == 0


@SLOW
@given(
    parts=st.lists(
        st.one_of(messages.map(lambda m: ("frame", m)), garbage.map(lambda g: ("garbage", g))),
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 10**6), max_size=30),
    tail=st.one_of(st.just(b""), garbage),
)
def test_frames_survive_any_garbage_around_them(parts: list, cuts: list[int], tail: bytes) -> None:
    sent = [value for kind, value in parts if kind == "frame"]
    frames = [encode(m) for m in sent]
    it = iter(frames)
    data = b"".join(next(it) if k == "frame" else v for k, v in parts) + tail
    decoder = Decoder()
    out = feed_checked(decoder, chunked(data, cuts))
    # Every frame comes out, in order, however much garbage surrounds it and
    # however the stream is split: garbage never swallows a whole frame.
    assert out == sent
    stats = decoder.stats
    assert stats.frames_ok == len(sent)
    assert stats.bytes_received == len(data)
    # Every byte is accounted for: in a decoded frame, skipped, or waiting.
    assert stats.bytes_skipped + sum(map(len, frames)) + decoder.buffered == len(data)
    # What still waits is the start of a claimed frame, or half a magic.
    waiting = data[len(data) - decoder.buffered :]
    assert waiting == b"" or waiting[:2] == MAGIC or waiting == MAGIC[:1]


@SLOW
@given(msg=messages, data=st.data())
def test_a_corrupted_frame_never_yields_a_different_message(msg: Message, data) -> None:
    frame = bytearray(encode(msg))
    positions = data.draw(
        st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=3, unique=True)
    )
    for pos in positions:
        frame[pos] ^= data.draw(st.integers(1, 255))
    follow = encode(Resume())
    out = Decoder().feed(bytes(frame) + follow)
    # A few changed bytes are either caught (then only the follower comes
    # out) or - if they cancel out - nothing changed at all.
    assert out in ([Resume()], [msg, Resume()])
