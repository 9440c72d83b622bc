"""A Decoder with a small ``max_body``: what the agent uses for host input."""

from __future__ import annotations

import random

import msgpack
import pytest

from iim_protocol.codec import (
    HEADER,
    MAGIC,
    MAX_BODY,
    MAX_FRAME,
    MAX_HOST_BODY,
    TRAILER,
    Decoder,
    encode,
)
from iim_protocol.messages import Resume, Sync
from tests.protocol.samples import LARGEST_HEARTBEAT, SAMPLE_IDS, SAMPLE_MESSAGES, frame_obj

SYNC = encode(Sync())
HOST_FRAME = HEADER.size + MAX_HOST_BODY + TRAILER.size


def host_decoder() -> Decoder:
    return Decoder(max_body=MAX_HOST_BODY)


def test_default_limit_is_max_body() -> None:
    decoder = Decoder()
    assert (decoder.max_body, decoder.max_frame) == (MAX_BODY, MAX_FRAME)
    assert host_decoder().max_frame == HOST_FRAME


@pytest.mark.parametrize("bad", [-1, MAX_BODY + 1, 10**9])
def test_max_body_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(ValueError):
        Decoder(max_body=bad)


@pytest.mark.parametrize("bad", [True, 64.0, "64", None])
def test_max_body_must_be_an_int(bad: object) -> None:
    with pytest.raises(TypeError):
        Decoder(max_body=bad)  # type: ignore[arg-type]


def test_sync_whole_byte_by_byte_and_with_trailing_data() -> None:
    decoder = host_decoder()
    assert decoder.feed(SYNC) == [Sync()]
    for i in range(len(SYNC)):
        assert decoder.feed(SYNC[i : i + 1]) == ([Sync()] if i == len(SYNC) - 1 else [])
    assert decoder.feed(SYNC + b"console noise\r\n" + SYNC[:7]) == [Sync()]
    assert decoder.buffered == 7
    assert decoder.feed(SYNC[7:]) == [Sync()]
    assert decoder.stats.frames_ok == 4
    assert decoder.stats.bytes_skipped == len(b"console noise\r\n")
    assert dict(decoder.stats.rejected) == {}


def test_a_body_of_exactly_max_host_body_is_accepted() -> None:
    base = len(msgpack.packb({"type": "sync", "pad": ""}))
    frame = frame_obj({"type": "sync", "pad": "x" * (MAX_HOST_BODY - base - 1)})
    assert len(frame) == HOST_FRAME
    decoder = host_decoder()
    assert decoder.feed(frame) == [Sync()]
    assert decoder.stats.unknown_fields == 1


def test_a_larger_frame_is_oversize_at_its_header() -> None:
    frame = frame_obj({"type": "sync", "pad": "x" * MAX_HOST_BODY})
    decoder = host_decoder()
    # Rejected as soon as the header is in: nothing waits for the body.
    assert decoder.feed(frame[: HEADER.size]) == []
    assert dict(decoder.stats.rejected) == {"oversize": 1}
    assert decoder.buffered <= 1
    # The rest is skipped as garbage; a sync right after it is found.
    assert decoder.feed(frame[HEADER.size :] + SYNC) == [Sync()]
    assert decoder.stats.frames_ok == 1


@pytest.mark.parametrize("msg", SAMPLE_MESSAGES, ids=SAMPLE_IDS)
def test_guest_messages_larger_than_the_limit_are_refused(msg) -> None:
    frame = encode(msg)
    decoder = host_decoder()
    out = decoder.feed(frame + SYNC)
    if len(frame) <= HOST_FRAME:
        assert out == [msg, Sync()]  # small enough: decoded (the agent ignores it)
    else:
        assert out == [Sync()]
        assert decoder.stats.rejected["oversize"] >= 1
    assert decoder.buffered == 0


def test_a_flood_keeps_the_buffer_within_one_small_frame() -> None:
    rng = random.Random(9)
    decoder = host_decoder()
    junk = [
        encode(LARGEST_HEARTBEAT),
        MAGIC + b"\x01" + MAX_HOST_BODY.to_bytes(2, "big"),  # claims the most allowed
        MAGIC + b"\x01\xff\xff",
        bytes(rng.randrange(256) for _ in range(5000)),
        encode(Resume()),
    ]
    fed = 0
    found = 0
    syncs = 0
    for _ in range(300):
        chunk = rng.choice(junk)
        if rng.random() < 0.2:
            chunk += SYNC
        found += chunk.count(SYNC)
        cut = rng.randrange(len(chunk) + 1)
        for part in (chunk[:cut], chunk[cut:]):
            fed += len(part)
            syncs += sum(isinstance(m, Sync) for m in decoder.feed(part))
            assert decoder.buffered < HOST_FRAME
    assert decoder.stats.bytes_received == fed
    assert decoder.stats.frames_rejected > 0
    assert found > 0
    assert syncs == found  # every sync in the flood still comes out
