"""What a 0.1.0 peer sees: a frozen copy of 0.1.0's field table, and 0.1.0's own codec.

``message_from_wire_010`` is 0.1.0's ``message_from_wire`` (git 3166765,
iim_protocol/messages.py) reduced to what decides the outcome: which types
exist, which fields each knows, that unknown fields are counted and skipped.
The values of those fields are validated exactly as 0.1.0 did (this version's
constructors did not change for them), so it builds this version's classes
with every 0.2 field left at its default - "0.1.0 relay ignores them".

``old_codec`` extracts the real 0.1.0 ``iim_protocol`` and ``guest_agent``
from git when the history is there, for tests that run the old code itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Optional

from iim_protocol.codec import HEADER, TRAILER
from iim_protocol.messages import MESSAGE_TYPES, InvalidMessage, Message

REPO = Path(__file__).resolve().parents[2]
RECORDING = Path(__file__).with_name("data") / "agent-0.1.0.hex"
COMMIT_010 = "3166765"

# Frozen from 0.1.0: message type -> the fields it knew.
FIELDS_010: dict[str, tuple[str, ...]] = {
    "hello": ("protocol_version", "agent_version", "boot_id", "heartbeat_interval", "checks"),
    "heartbeat": ("seq", "checks"),
    "failure": ("seq", "check", "reason"),
    "recovered": ("seq", "check"),
    "goodbye": ("reason",),
    "pause": ("duration", "reason"),
    "resume": (),
}


def message_from_wire_010(obj: Any) -> tuple[Message, int]:
    """Decode a msgpack body the way a 0.1.0 relay does: (message, unknown fields)."""
    if not isinstance(obj, dict):
        raise InvalidMessage("not_a_map", f"body is a {type(obj).__name__}, not a map")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("no_type", "body has no string 'type'")
    known = FIELDS_010.get(kind)
    if known is None:
        raise InvalidMessage("unknown_type", f"unknown message type {kind[:32]!r}")
    fields = {k: v for k, v in obj.items() if k in known}
    unknown = sum(1 for k in obj if k != "type" and k not in known)
    try:
        return MESSAGE_TYPES[kind].from_fields(fields), unknown
    except TypeError as exc:
        raise InvalidMessage("missing_field", str(exc)) from None


def split_frames(stream: bytes) -> list[bytes]:
    """The bodies of a clean stream of frames (no garbage), in order."""
    bodies, pos = [], 0
    while pos < len(stream):
        _, _, length = HEADER.unpack_from(stream, pos)
        start = pos + HEADER.size
        bodies.append(stream[start : start + length])
        pos = start + length + TRAILER.size
    assert pos == len(stream), "the stream ends inside a frame"
    return bodies


def load_recording() -> bytes:
    lines = RECORDING.read_text(encoding="ascii").splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


def old_codec(dest: Path) -> Optional[Path]:
    """Extract 0.1.0's iim_protocol and guest_agent under ``dest``; None without git history."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", COMMIT_010, "iim_protocol", "guest_agent"],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=30)
    return dest


# Run inside a python whose sys.path starts with the 0.1.0 tree: decode stdin
# with 0.1.0's Decoder, print each message's to_wire() and the stats as JSON.
DECODE_010 = """
import json, sys
import iim_protocol.codec as codec
assert codec.__file__.startswith(sys.argv[1]), codec.__file__
d = codec.Decoder()
out = [m.to_wire() for m in d.feed(sys.stdin.buffer.read())]
print(json.dumps({"messages": out, "stats": d.stats.as_dict()}))
"""
