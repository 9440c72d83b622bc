"""docs/protocol.md: every hex example decodes to exactly the documented message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iim_protocol.codec import HEADER, MAX_BODY, TRAILER, Decoder, encode
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
    Recovered,
    Resume,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

# The documented values, kept here too so that neither side can drift alone.
EXPECTED: dict[str, Message] = {
    "hello": Hello(
        protocol_version=1,
        agent_version="0.1.0",
        boot_id="6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b",
        heartbeat_interval=2.0,
        checks=("sshd", "nginx"),
    ),
    "heartbeat": Heartbeat(seq=42, checks={"sshd": "ok", "nginx": "failed"}),
    "failure": Failure(seq=43, check="nginx", reason="no process matches"),
    "recovered": Recovered(seq=44, check="nginx"),
    "goodbye": Goodbye(reason="shutdown"),
    "pause": Pause(duration=1800.0, reason="kernel update"),
    "resume": Resume(),
}

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
    assert sorted(examples()) == sorted(MESSAGE_TYPES) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_decodes_to_the_documented_message(name: str) -> None:
    frame = examples()[name]
    decoder = Decoder()
    out = decoder.feed(frame)
    assert len(out) == 1
    (msg,) = out
    assert type(msg) is MESSAGE_TYPES[name]
    assert msg.TYPE == name
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
