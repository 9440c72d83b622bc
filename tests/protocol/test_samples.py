"""Every sample message survives framing however the bytes arrive."""

from __future__ import annotations

import random

import pytest

from iim_protocol.codec import MAX_BODY, MAX_FRAME, Decoder, encode
from iim_protocol.messages import MESSAGE_TYPES, Message
from tests.protocol.samples import GOOD, GOOD_FRAME, SAMPLE_IDS, SAMPLE_MESSAGES, split_at

each_sample = pytest.mark.parametrize("msg", SAMPLE_MESSAGES, ids=SAMPLE_IDS)


def _clean(decoder: Decoder, frames: int, received: int) -> None:
    stats = decoder.stats
    assert stats.frames_ok == frames
    assert stats.bytes_received == received
    assert stats.bytes_skipped == 0
    assert stats.unknown_fields == 0
    assert dict(stats.rejected) == {}
    assert decoder.buffered == 0


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLE_MESSAGES} == set(MESSAGE_TYPES.values())
    assert all(MESSAGE_TYPES[m.TYPE] is type(m) for m in SAMPLE_MESSAGES)


@each_sample
def test_whole(msg: Message) -> None:
    data = encode(msg)
    assert len(data) <= MAX_FRAME
    decoder = Decoder()
    out = decoder.feed(data)
    assert out == [msg]
    assert type(out[0]) is type(msg)
    _clean(decoder, 1, len(data))


@each_sample
def test_byte_by_byte(msg: Message) -> None:
    data = encode(msg)
    decoder = Decoder()
    out = []
    for i in range(len(data)):
        got = decoder.feed(data[i : i + 1])
        # Nothing comes out before the last byte, everything with it.
        assert got == ([msg] if i == len(data) - 1 else [])
        assert decoder.buffered == (0 if got else i + 1)
        out += got
    assert out == [msg]
    _clean(decoder, 1, len(data))


@each_sample
@pytest.mark.parametrize("seed", range(5))
def test_random_splits(msg: Message, seed: int) -> None:
    rng = random.Random(seed)
    data = encode(msg) * 3
    points = rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 12)))
    decoder = Decoder()
    out = []
    for chunk in split_at(data, points):
        out += decoder.feed(chunk)
    assert out == [msg, msg, msg]
    _clean(decoder, 3, len(data))


@each_sample
def test_empty_feed_is_harmless(msg: Message) -> None:
    decoder = Decoder()
    data = encode(msg)
    assert decoder.feed(b"") == []
    assert decoder.feed(data[:7]) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(data[7:]) == [msg]
    _clean(decoder, 1, len(data))


@each_sample
@pytest.mark.parametrize("cut", [1, 2, 5, 9, len(GOOD_FRAME) - 1])
def test_followed_by_partial_next_frame(msg: Message, cut: int) -> None:
    decoder = Decoder()
    data = encode(msg)
    assert decoder.feed(data + GOOD_FRAME[:cut]) == [msg]
    assert decoder.buffered == cut  # the partial frame waits for its rest
    assert decoder.feed(GOOD_FRAME[cut:]) == [GOOD]
    _clean(decoder, 2, len(data) + len(GOOD_FRAME))


@each_sample
@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"garbage\r\n", bytes(range(0xC1)), b"\xff" * (MAX_BODY + 100)],
    ids=["nul", "text", "no-c1", "long"],
)
def test_followed_by_garbage(msg: Message, garbage: bytes) -> None:
    decoder = Decoder()
    data = encode(msg)
    assert decoder.feed(data + garbage) == [msg]
    assert decoder.stats.bytes_skipped == len(garbage)
    assert decoder.buffered == 0
    assert decoder.stats.frames_ok == 1
    assert dict(decoder.stats.rejected) == {}
    # And the stream goes on.
    assert decoder.feed(GOOD_FRAME) == [GOOD]


@each_sample
def test_reencoding_a_decoded_message_gives_the_same_bytes(msg: Message) -> None:
    data = encode(msg)
    (decoded,) = Decoder().feed(data)
    assert encode(decoded) == data
