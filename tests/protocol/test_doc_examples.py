"""docs/protocol.md: every hex example decodes to exactly the documented message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iim_protocol.codec import HEADER, MAX_BODY, MAX_HOST_BODY, TRAILER, Decoder, encode
from iim_protocol.messages import (
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

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

# The documented values, kept here too so that neither side can drift alone.
BOOT_ID = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"
START_ID = "0d9e4c1b7a2f4e6b8c3d5a1f2e7b9c40"
EXPECTED: dict[str, Message] = {
    "hello": Hello(
        protocol_version=1,
        agent_version="0.2.0",
        boot_id=BOOT_ID,
        heartbeat_interval=2.0,
        checks=("sshd", "nginx"),
        start_id=START_ID,
        pause=None,
        pause_known=True,
    ),
    "heartbeat": Heartbeat(
        seq=42,
        checks={"sshd": "ok", "nginx": "failed"},
        interval=2.0,
        boot_id=BOOT_ID,
        start_id=START_ID,
        pause=PauseState(remaining=1200.0, reason="kernel update"),
    ),
    "failure": Failure(seq=43, check="nginx", reason="no process matches"),
    "recovered": Recovered(seq=44, check="nginx"),
    "goodbye": Goodbye(reason="shutdown"),
    "pause": Pause(duration=1800.0, reason="kernel update"),
    "resume": Resume(),
    "sync": Sync(),
    # The 0.1.0 format of the two messages that gained fields: still accepted,
    # decoded with the new fields absent.
    "hello-0.1.0": Hello(
        protocol_version=1,
        agent_version="0.1.0",
        boot_id=BOOT_ID,
        heartbeat_interval=2.0,
        checks=("sshd", "nginx"),
    ),
    "heartbeat-0.1.0": Heartbeat(seq=42, checks={"sshd": "ok", "nginx": "failed"}),
}
LEGACY = ("hello-0.1.0", "heartbeat-0.1.0")

EXAMPLE = re.compile(r"^### Example: (\S+)\n(.*?)^```hex\n(.*?)^```", re.M | re.S)


def examples() -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for match in EXAMPLE.finditer(DOC.read_text(encoding="utf-8")):
        name, between, block = match.groups()
        assert "### " not in between, f"example {name} has no hex block of its own"
        assert name not in found, f"example {name} appears twice"
        found[name] = bytes.fromhex("".join(block.split()))
    return found


def test_there_is_one_example_per_message_type() -> None:
    assert sorted(examples()) == sorted(EXPECTED)
    assert sorted(set(EXPECTED) - set(LEGACY)) == sorted(MESSAGE_TYPES)


def test_the_legacy_examples_decode_with_the_new_fields_absent() -> None:
    hello, heartbeat = (EXPECTED[name] for name in LEGACY)
    assert isinstance(hello, Hello) and isinstance(heartbeat, Heartbeat)
    assert (hello.start_id, hello.pause, hello.pause_known) == ("", None, False)
    assert (heartbeat.interval, heartbeat.boot_id, heartbeat.start_id) == (None, "", "")
    assert (heartbeat.pause, heartbeat.pause_known) == (None, False)
    # And the current ones carry them: nil pause (known) differs from absent.
    assert EXPECTED["hello"].pause is None and EXPECTED["hello"].pause_known


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_decodes_to_the_documented_message(name: str) -> None:
    frame = examples()[name]
    decoder = Decoder()
    out = decoder.feed(frame)
    assert len(out) == 1
    (msg,) = out
    kind = name.split("-")[0]
    assert type(msg) is MESSAGE_TYPES[kind]
    assert msg.TYPE == kind
    assert msg == EXPECTED[name]
    assert decoder.stats.frames_ok == 1
    assert decoder.stats.bytes_skipped == 0
    assert dict(decoder.stats.rejected) == {}
    assert decoder.stats.unknown_fields == 0
    assert decoder.buffered == 0
    # And the example is exactly what encode() produces today.
    assert encode(EXPECTED[name]) == frame


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_is_shown_with_its_constructor(name: str) -> None:
    # The line above each block names the message; it must match the bytes.
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"### Example: {name}\n", 1)[1].split("```hex", 1)[0]
    shown = re.search(r"`(\w+)\((.*)\)`", section)
    assert shown is not None
    assert shown.group(1) == type(EXPECTED[name]).__name__
    for value in re.findall(r'"([^"]*)"', shown.group(2)):
        assert value in repr(EXPECTED[name]), value


def test_documented_limits_match_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = {
        "MAX_BODY": f"| `MAX_BODY` | {MAX_BODY} bytes |",
        "MAX_FRAME": f"| `MAX_FRAME` | {HEADER.size + MAX_BODY + TRAILER.size} bytes |",
        "MAX_HOST_BODY": f"| `MAX_HOST_BODY` | {MAX_HOST_BODY} bytes |",
        "MAX_NAME_BYTES": f"| `MAX_NAME_BYTES` | {MAX_NAME_BYTES} bytes |",
        "MAX_TEXT_BYTES": f"| `MAX_TEXT_BYTES` | {MAX_TEXT_BYTES} bytes |",
        "MAX_CHECKS": f"| `MAX_CHECKS` | {MAX_CHECKS} |",
        "MIN_HEARTBEAT_INTERVAL": f"| `MIN_HEARTBEAT_INTERVAL` | {MIN_HEARTBEAT_INTERVAL:g} s |",
        "MAX_HEARTBEAT_INTERVAL": f"| `MAX_HEARTBEAT_INTERVAL` | {MAX_HEARTBEAT_INTERVAL:g} s |",
        "MAX_PAUSE_SECONDS": f"| `MAX_PAUSE_SECONDS` | {MAX_PAUSE_SECONDS:.0f} s (7 days) |",
        "MAX_SEQ": "| `MAX_SEQ` | 2^63 - 1 |",
    }
    assert MAX_SEQ == 2**63 - 1
    for name, row in rows.items():
        assert row in text, name
    # The sizes quoted for the largest messages are today's.
    from tests.protocol.samples import LARGEST_HEARTBEAT, LARGEST_HELLO

    heartbeat, hello = (len(encode(m)) - HEADER.size - TRAILER.size
                        for m in (LARGEST_HEARTBEAT, LARGEST_HELLO))
    assert f"a 256-byte pause reason, is {heartbeat} bytes; a hello at its limits is {hello})" in (
        " ".join(text.split())
    )
