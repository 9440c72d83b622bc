"""Garbage, bad lengths, truncation and bit flips: the decoder resynchronises and counts."""

from __future__ import annotations

import pytest

from iim_protocol.codec import (
    HEADER,
    MAGIC,
    MAX_BODY,
    MAX_FRAME,
    TRAILER,
    Decoder,
    encode,
)
from iim_protocol.messages import Failure, Hello, Pause
from tests.protocol.samples import GOOD, GOOD_FRAME, LARGEST_HEARTBEAT, frame_body

HELLO = Hello(1, "0.1.0", "boot-1", 1.0, ("sshd", "nginx"))
HELLO_FRAME = encode(HELLO)


def feed_all(decoder: Decoder, *chunks: bytes) -> list:
    out = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        assert decoder.buffered < MAX_FRAME
    return out


def test_garbage_without_magic_before_between_and_after() -> None:
    before, between, after = b"login: ", b"\x00\xff" * 50, b"\r\n[ OK ] Started"
    decoder = Decoder()
    data = before + HELLO_FRAME + between + GOOD_FRAME + after
    assert decoder.feed(data) == [HELLO, GOOD]
    stats = decoder.stats
    assert stats.bytes_received == len(data)
    assert stats.bytes_skipped == len(before) + len(between) + len(after)
    assert stats.frames_ok == 2
    assert dict(stats.rejected) == {}
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    "garbage, reasons",
    [
        # The magic followed by a version that is not 1.
        (b"xx" + MAGIC + b"yyy", {"bad_version": 1}),
        # c1 49 c1 ...: version 0xc1, then c1 49 02: version 2.
        (MAGIC + MAGIC + b"\x02\x00\x00", {"bad_version": 2}),
        # The magic, version 1 and a length beyond MAX_BODY.
        (MAGIC + b"\x01\xff\xff junk", {"oversize": 1}),
        # A complete fake frame whose CRC is wrong.
        (MAGIC + b"\x01\x00\x02ab\x00\x00\x00\x00", {"bad_crc": 1}),
        # Several of them.
        (
            MAGIC + b"2" + MAGIC + b"\x01\x10\x01" + MAGIC + b"\x01\x00\x00abcd",
            {
                "bad_version": 1,
                "oversize": 1,
                "bad_crc": 1,
            },
        ),
        # Half a magic right before a real magic.
        (b"\xc1", {}),
        (b"\xc1\xc1", {}),
    ],
    ids=["version", "double-magic", "oversize", "bad-crc", "mixed", "half", "halves"],
)
@pytest.mark.parametrize("where", ["before", "between", "after"])
def test_garbage_containing_the_magic(garbage: bytes, reasons: dict, where: str) -> None:
    parts = [HELLO_FRAME, GOOD_FRAME]
    parts.insert({"before": 0, "between": 1, "after": 2}[where], garbage)
    data = b"".join(parts)
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        decoder = Decoder()
        assert feed_all(decoder, *chunks) == [HELLO, GOOD]
        assert decoder.stats.bytes_skipped + decoder.buffered == len(garbage)
        assert dict(decoder.stats.rejected) == reasons
        assert decoder.stats.frames_ok == 2
        if where != "after" or not garbage.endswith(b"\xc1"):
            assert decoder.buffered == 0
        else:  # a trailing half magic waits for its second byte
            assert decoder.buffered == 1


def test_fake_header_whose_length_covers_the_good_frame() -> None:
    # Garbage ending in a header that claims more bytes than follow: the good
    # frame inside its claimed extent is delivered at once, not held back.
    fake = b"noise" + MAGIC + b"\x01" + (1000).to_bytes(2, "big")
    decoder = Decoder()
    assert decoder.feed(fake + GOOD_FRAME) == [GOOD]
    assert dict(decoder.stats.rejected) == {"truncated": 1}
    assert decoder.stats.bytes_skipped == len(fake)
    assert decoder.buffered == 0


def test_fake_header_whose_claimed_extent_ends_inside_the_good_frame() -> None:
    fake = MAGIC + b"\x01" + (10).to_bytes(2, "big")  # ends inside GOOD_FRAME
    decoder = Decoder()
    assert decoder.feed(fake + GOOD_FRAME) == [GOOD]
    assert dict(decoder.stats.rejected) == {"bad_crc": 1}
    assert decoder.stats.bytes_skipped == len(fake)


@pytest.mark.parametrize("length", [MAX_BODY + 1, 0x8000, 0xFFFF])
def test_oversized_length_field(length: int) -> None:
    bad = HEADER.pack(MAGIC, 1, length) + b"\x00" * 64
    decoder = Decoder()
    assert decoder.feed(bad + GOOD_FRAME) == [GOOD]
    assert dict(decoder.stats.rejected) == {"oversize": 1}
    assert decoder.stats.bytes_skipped == len(bad)
    assert decoder.buffered == 0


def test_length_of_exactly_max_body_is_accepted() -> None:
    # Not a message (a 4096-byte string is over every text limit), but the
    # frame itself is legal: it is checked and rejected by content, not size.
    import msgpack

    body = msgpack.packb("x" * (MAX_BODY - 3))
    assert len(body) == MAX_BODY
    decoder = Decoder()
    assert decoder.feed(frame_body(body) + GOOD_FRAME) == [GOOD]
    assert dict(decoder.stats.rejected) == {"not_a_map": 1}
    assert decoder.stats.bytes_skipped == 0


@pytest.mark.parametrize("frame", [HELLO_FRAME, encode(LARGEST_HEARTBEAT)], ids=["hello", "big"])
def test_truncated_frame_followed_by_good_frame(frame: bytes) -> None:
    for cut in range(1, len(frame)):
        decoder = Decoder()
        out = decoder.feed(frame[:cut] + GOOD_FRAME)
        assert out == [GOOD], cut
        if cut < HEADER.size:
            # The header is incomplete: the good frame's magic completes it
            # into nonsense (or a half magic is simply skipped).
            assert sum(decoder.stats.rejected.values()) <= 1, cut
        elif cut + len(GOOD_FRAME) >= len(frame):
            # Enough bytes for the claimed length: the CRC fails.
            assert dict(decoder.stats.rejected) == {"bad_crc": 1}, cut
        else:
            # The good frame completed first: the cut one is given up.
            assert dict(decoder.stats.rejected) == {"truncated": 1}, cut
        assert decoder.stats.bytes_skipped == cut
        assert decoder.stats.frames_ok == 1
        assert decoder.buffered == 0


def test_truncated_frame_byte_by_byte_does_not_delay_the_good_frame() -> None:
    frame = encode(LARGEST_HEARTBEAT)
    decoder = Decoder()
    decoder.feed(frame[:100])
    got = [decoder.feed(GOOD_FRAME[i : i + 1]) for i in range(len(GOOD_FRAME))]
    # The good frame comes out with its own last byte.
    assert got[-1] == [GOOD] and not any(got[:-1])
    assert dict(decoder.stats.rejected) == {"truncated": 1}


def test_truncated_frame_at_end_of_stream_waits_then_reset_counts_it() -> None:
    decoder = Decoder()
    assert decoder.feed(HELLO_FRAME[:-3]) == []
    assert decoder.buffered == len(HELLO_FRAME) - 3
    decoder.reset()  # e.g. the host reconnected
    assert decoder.buffered == 0
    assert decoder.stats.bytes_skipped == len(HELLO_FRAME) - 3
    # The tail of the old frame arrives after the reset: it is garbage now.
    assert decoder.feed(HELLO_FRAME[-3:] + GOOD_FRAME) == [GOOD]
    assert decoder.stats.bytes_skipped == len(HELLO_FRAME)
    assert decoder.stats.frames_ok == 1


def _flip(frame: bytes, bit: int) -> bytes:
    data = bytearray(frame)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def _expected_flip_reason(frame: bytes, flipped: bytes) -> str:
    """The rejection a single flipped bit must cause (decided from the header)."""
    pos = next(i for i in range(len(frame)) if frame[i] != flipped[i])
    if pos < 2:
        return ""  # no magic, no frame: plain skipped bytes
    if pos == 2:
        return "bad_version"
    if pos in (3, 4):
        length = int.from_bytes(flipped[3:5], "big")
        if length > MAX_BODY:
            return "oversize"
        if length > len(frame) - HEADER.size - TRAILER.size:
            claimed = HEADER.size + length + TRAILER.size
            return "bad_crc" if claimed <= len(flipped) + len(GOOD_FRAME) else "truncated"
    return "bad_crc"


@pytest.mark.parametrize(
    "msg",
    [HELLO, Failure(3, "nginx", "exit 1"), Pause(60.0, "upgrade")],
    ids=["hello", "failure", "pause"],
)
def test_every_single_bit_flip_is_caught_and_the_next_frame_recovered(msg) -> None:
    frame = encode(msg)
    seen = set()
    for bit in range(len(frame) * 8):
        flipped = _flip(frame, bit)
        decoder = Decoder()
        out = decoder.feed(flipped + GOOD_FRAME)
        # Never the damaged message, never anything else: just the good one.
        assert out == [GOOD], bit
        reason = _expected_flip_reason(frame, flipped)
        assert dict(decoder.stats.rejected) == ({reason: 1} if reason else {}), bit
        assert decoder.stats.bytes_skipped == len(flipped), bit
        assert decoder.buffered == 0
        seen.add(reason)
    assert seen == {"", "bad_version", "oversize", "truncated", "bad_crc"}


def test_bad_version_with_a_valid_crc() -> None:
    bad = encode(HELLO)
    bad = frame_body(bad[HEADER.size : -TRAILER.size], version=2)
    decoder = Decoder()
    assert decoder.feed(bad + GOOD_FRAME) == [GOOD]
    assert dict(decoder.stats.rejected) == {"bad_version": 1}
    assert decoder.stats.bytes_skipped == len(bad)
    assert decoder.stats.frames_ok == 1


def test_wrong_crc_with_correct_everything_else() -> None:
    bad = HELLO_FRAME[:-4] + bytes(4)
    decoder = Decoder()
    assert decoder.feed(bad + GOOD_FRAME) == [GOOD]
    assert dict(decoder.stats.rejected) == {"bad_crc": 1}
    assert decoder.stats.bytes_skipped == len(bad)


def test_huge_feed_keeps_the_buffer_bounded() -> None:
    decoder = Decoder()
    junk = (MAGIC + b"\x01\x10\x00") * 5000  # every header claims MAX_BODY
    out = decoder.feed(junk + GOOD_FRAME + junk[:1000])
    assert out == [GOOD]
    assert decoder.buffered < MAX_FRAME
    stats = decoder.stats
    assert stats.bytes_received == stats.bytes_skipped + len(GOOD_FRAME) + decoder.buffered
