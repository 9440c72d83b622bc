"""0.1.0 peers: a recorded 0.1.0 agent stream decodes with the new codec, and what this
version sends decodes, for a 0.1.0 relay, to exactly the 0.1.0 message."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys

import msgpack
import pytest

from iim_protocol.codec import Decoder, encode
from iim_protocol.messages import (
    GUEST_TO_HOST,
    MESSAGE_TYPES,
    Failure,
    Goodbye,
    Heartbeat,
    Hello,
    InvalidMessage,
    Message,
    Pause,
    Recovered,
    Resume,
    Sync,
)
from tests.protocol.compat_010 import (
    DECODE_010,
    FIELDS_010,
    load_recording,
    message_from_wire_010,
    old_codec,
    split_frames,
)
from tests.protocol.samples import SAMPLE_IDS, SAMPLE_MESSAGES

STREAM = load_recording()
KINDS = [
    "hello", "heartbeat", "heartbeat", "heartbeat", "heartbeat", "failure", "heartbeat",
    "heartbeat", "pause", "heartbeat", "heartbeat", "heartbeat", "resume", "heartbeat",
    "recovered", "heartbeat", "heartbeat", "heartbeat", "goodbye",
]  # fmt: skip


def as_010(msg: Message) -> Message:
    """The message with every 0.2 field at its default: what a 0.1.0 peer knows of it."""
    if isinstance(msg, Hello):
        return dataclasses.replace(msg, start_id="", pause=None, pause_known=False)
    if isinstance(msg, Heartbeat):
        return dataclasses.replace(
            msg, interval=None, boot_id="", start_id="", pause=None, pause_known=False
        )
    return msg


# -- (a) a 0.1.0 agent's bytes, decoded by this version --------------------------


def check_recording(out: list[Message], decoder: Decoder) -> None:
    assert [m.TYPE for m in out] == KINDS
    stats = decoder.stats
    assert (stats.frames_ok, stats.frames_rejected, stats.unknown_fields) == (19, 0, 0)
    assert (stats.bytes_received, stats.bytes_skipped, decoder.buffered) == (len(STREAM), 0, 0)
    hello = out[0]
    assert isinstance(hello, Hello)
    assert (hello.agent_version, hello.heartbeat_interval, hello.checks) == ("0.1.0", 0.5, ("web",))
    # No level in a 0.1.0 frame: "unknown", never "not paused".
    assert (hello.start_id, hello.pause, hello.pause_known) == ("", None, False)
    beats = [m for m in out if isinstance(m, Heartbeat)]
    for beat in beats:
        assert (beat.interval, beat.boot_id, beat.start_id) == (None, "", "")
        assert (beat.pause, beat.pause_known) == (None, False)
    states = ["starting"] + ["ok"] * 3 + ["failed"] * 6 + ["ok"] * 3
    assert [dict(b.checks)["web"] for b in beats] == states
    failure = out[5]
    assert isinstance(failure, Failure) and failure.check == "web"
    assert failure.reason.startswith("process iimrec-web: pid ")
    assert out[8] == Pause(600.0, "kernel update")
    assert out[12] == Resume()
    assert isinstance(out[14], Recovered) and out[14].check == "web"
    assert out[18] == Goodbye("stop")
    # Every frame of the recording is exactly what this version encodes for it.
    assert b"".join(encode(m) for m in out) == STREAM


def test_the_recorded_010_stream_decodes_whole() -> None:
    decoder = Decoder()
    check_recording(decoder.feed(STREAM), decoder)


def test_the_recorded_010_stream_decodes_byte_by_byte() -> None:
    decoder = Decoder()
    out: list[Message] = []
    for i in range(len(STREAM)):
        out += decoder.feed(STREAM[i : i + 1])
    check_recording(out, decoder)


@pytest.mark.parametrize("seed", range(5))
def test_the_recorded_010_stream_decodes_in_random_chunks_with_trailing_data(seed: int) -> None:
    rng = random.Random(seed)
    data = STREAM + b"\r\nconsole noise"
    cuts = sorted(rng.sample(range(1, len(data)), 20))
    decoder = Decoder()
    out: list[Message] = []
    for a, b in zip([0, *cuts], [*cuts, len(data)]):
        out += decoder.feed(data[a:b])
    assert [m.TYPE for m in out] == KINDS
    assert decoder.stats.frames_rejected == 0
    assert decoder.stats.bytes_skipped == len(b"\r\nconsole noise")


# -- (b) this version's frames, as a 0.1.0 relay sees them ------------------------


@pytest.mark.parametrize("msg", SAMPLE_MESSAGES, ids=SAMPLE_IDS)
def test_a_010_relay_sees_every_guest_sample_as_the_010_message(msg: Message) -> None:
    obj = msgpack.unpackb(encode(msg)[5:-4], raw=False)
    if isinstance(msg, Sync):
        with pytest.raises(InvalidMessage) as info:
            message_from_wire_010(obj)
        assert info.value.reason == "unknown_type"  # counted and skipped by a 0.1.0 agent
        return
    old, unknown = message_from_wire_010(obj)
    assert old == as_010(msg)
    assert unknown == len(set(obj) - {"type"} - set(FIELDS_010[msg.TYPE]))


def test_the_frozen_table_is_this_version_minus_the_02_fields() -> None:
    added = {
        "hello": {"start_id", "pause"},
        "heartbeat": {"interval", "boot_id", "start_id", "pause"},
    }
    assert set(FIELDS_010) == GUEST_TO_HOST
    for kind, fields in FIELDS_010.items():
        now = set(MESSAGE_TYPES[kind].wire_fields())
        assert now - set(fields) == added.get(kind, set()), kind
        assert set(fields) <= now


def test_split_frames_matches_the_decoder() -> None:
    bodies = split_frames(STREAM)
    assert [message_from_wire_010(msgpack.unpackb(b, raw=False))[0] for b in bodies] == (
        Decoder().feed(STREAM)
    )


def test_the_real_010_codec_decodes_the_new_samples(tmp_path) -> None:
    """Not a copy: 0.1.0's own codec, from git, decodes this version's frames."""
    old = old_codec(tmp_path / "v010")
    if old is None:
        pytest.skip("no git history with 0.1.0 (a source tarball)")
    guest = [m for m in SAMPLE_MESSAGES if not isinstance(m, Sync)]
    stream = b"".join(encode(m) for m in guest) + encode(Sync())
    out = subprocess.run(
        [sys.executable, "-c", DECODE_010, str(old)],
        input=stream,
        capture_output=True,
        timeout=60,
        env={"PYTHONPATH": str(old), "PATH": "/usr/bin:/bin"},
        cwd=str(old),
    )
    assert out.returncode == 0, out.stderr.decode()
    seen = json.loads(out.stdout)
    want = [json.loads(json.dumps(as_010(m).to_wire())) for m in guest]
    assert seen["messages"] == want
    stats = seen["stats"]
    assert stats["frames_ok"] == len(guest)
    assert stats["rejected"] == {"unknown_type": 1}  # the sync: counted, skipped
    expected_unknown = sum(
        len(set(m.to_wire()) - {"type"} - set(FIELDS_010[m.TYPE])) for m in guest
    )
    assert expected_unknown > 0
    assert stats["unknown_fields"] == expected_unknown
