"""Sample messages and frame-building helpers shared by the protocol tests."""

from __future__ import annotations

import zlib
from typing import Any

import msgpack

from iim_protocol.codec import FRAME_VERSION, HEADER, MAGIC, TRAILER, encode
from iim_protocol.messages import (
    MAX_CHECKS,
    MAX_HEARTBEAT_INTERVAL,
    MAX_NAME_BYTES,
    MAX_PAUSE_SECONDS,
    MAX_SEQ,
    MAX_TEXT_BYTES,
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

# Names exactly MAX_NAME_BYTES long in UTF-8, in 1-, 2-, 3- and 4-byte characters.
LONG_ASCII = "a" * MAX_NAME_BYTES
LONG_2B = "é" * (MAX_NAME_BYTES // 2)
LONG_3B = "检" * (MAX_NAME_BYTES // 3) + "x" * (MAX_NAME_BYTES % 3)
LONG_4B = "\U0001f680" * (MAX_NAME_BYTES // 4)
LONG_TEXT = "ü" * (MAX_TEXT_BYTES // 2)

for _name in (LONG_ASCII, LONG_2B, LONG_3B, LONG_4B):
    assert len(_name.encode("utf-8")) == MAX_NAME_BYTES
assert len(LONG_TEXT.encode("utf-8")) == MAX_TEXT_BYTES


def max_check_names(prefix: str = "") -> list[str]:
    """MAX_CHECKS distinct names of exactly MAX_NAME_BYTES bytes each."""
    names = []
    for i in range(MAX_CHECKS):
        tag = f"{prefix}{i:02d}-"
        names.append(tag + "\u00e9" * ((MAX_NAME_BYTES - len(tag)) // 2))
        names[-1] += "z" * (MAX_NAME_BYTES - len(names[-1].encode("utf-8")))
        assert len(names[-1].encode("utf-8")) == MAX_NAME_BYTES
    return names


# The pause with the longest encoding: a float64 and a reason of MAX_TEXT_BYTES.
LONGEST_PAUSE = PauseState(remaining=MAX_PAUSE_SECONDS - 0.5, reason=LONG_TEXT)
LARGEST_HELLO = Hello(
    protocol_version=255,
    agent_version=LONG_4B,
    boot_id=LONG_3B,
    heartbeat_interval=MAX_HEARTBEAT_INTERVAL,
    checks=tuple(max_check_names()),
    start_id=LONG_2B,
    pause=LONGEST_PAUSE,
)
# 32 checks of 64-byte names in the longest state, a 64-bit seq, and every
# level field at its limit.
LARGEST_HEARTBEAT = Heartbeat(
    seq=MAX_SEQ,
    checks=tuple((n, "starting") for n in max_check_names()),
    interval=MAX_HEARTBEAT_INTERVAL - 0.5,
    boot_id=LONG_3B,
    start_id=LONG_4B,
    pause=LONGEST_PAUSE,
)
# The largest a 0.1.0 agent could send.
LARGEST_HELLO_010 = Hello(
    protocol_version=255,
    agent_version=LONG_4B,
    boot_id=LONG_3B,
    heartbeat_interval=MAX_HEARTBEAT_INTERVAL,
    checks=tuple(max_check_names()),
)
LARGEST_HEARTBEAT_010 = Heartbeat(
    seq=MAX_SEQ, checks=tuple((n, "starting") for n in max_check_names())
)
START_ID = "5b0c8e7f2a1d4c3b9e6f0a8d7c2b1e4f"

SAMPLES: list[tuple[str, Message]] = [
    ("hello-minimal", Hello(1, "1", "b", MIN_HEARTBEAT_INTERVAL)),
    (
        "hello-typical",
        Hello(1, "0.1.0", "2f9c1a3e-6a2d-4b8e-9d57-7b0c5e0e9a11", 1.0, ("sshd", "nginx")),
    ),
    ("hello-int-interval", Hello(1, "0.1.0", "boot", 5)),
    (
        "hello-unicode",
        Hello(1, "v\u00e9", "\u542f\u52a8", 2.5, ("\u6570\u636e\u5e93", "caf\u00e9 db")),
    ),
    ("hello-largest-0.1.0", LARGEST_HELLO_010),
    ("hello-largest", LARGEST_HELLO),
    (
        "hello-not-paused",
        Hello(1, "0.2.0", "boot", 2.0, ("sshd",), start_id=START_ID, pause_known=True),
    ),
    (
        "hello-paused",
        Hello(1, "0.2.0", "boot", 2.0, (), START_ID, PauseState(599.75, "kernel update")),
    ),
    ("hello-paused-no-reason", Hello(1, "0.2.0", "boot", 1, start_id="s", pause=PauseState(0))),
    ("heartbeat-empty", Heartbeat(0)),
    ("heartbeat-typical", Heartbeat(42, {"sshd": "ok", "nginx": "failed", "db": "starting"})),
    ("heartbeat-max-seq", Heartbeat(MAX_SEQ, {LONG_4B: "ok"})),
    ("heartbeat-largest-0.1.0", LARGEST_HEARTBEAT_010),
    ("heartbeat-largest", LARGEST_HEARTBEAT),
    (
        "heartbeat-level-not-paused",
        Heartbeat(7, {"sshd": "ok"}, 2.0, "boot", START_ID, None, pause_known=True),
    ),
    (
        "heartbeat-level-paused",
        Heartbeat(8, {"db": "failed"}, 0.2, "boot", START_ID, PauseState(1800, "upgrade")),
    ),
    (
        "heartbeat-level-max-pause",
        Heartbeat(9, (), 60, LONG_ASCII, LONG_3B, PauseState(MAX_PAUSE_SECONDS, "")),
    ),
    ("heartbeat-level-int-interval", Heartbeat(10, interval=5, boot_id="b", start_id="s")),
    ("failure-typical", Failure(7, "nginx", "process exited with status 1")),
    ("failure-empty-reason", Failure(0, "a", "")),
    ("failure-longest", Failure(MAX_SEQ, LONG_2B, LONG_TEXT)),
    ("recovered-typical", Recovered(8, "nginx")),
    ("recovered-unicode", Recovered(1, LONG_3B)),
    ("goodbye-default", Goodbye()),
    ("goodbye-shutdown", Goodbye("shutdown")),
    ("goodbye-reload", Goodbye("reload")),
    ("pause-zero", Pause(0.0)),
    ("pause-maximum", Pause(MAX_PAUSE_SECONDS, LONG_TEXT)),
    ("pause-typical", Pause(1800, "kernel update")),
    ("resume", Resume()),
    ("sync", Sync()),
]
SAMPLE_IDS = [name for name, _ in SAMPLES]
SAMPLE_MESSAGES = [msg for _, msg in SAMPLES]

GOOD = Heartbeat(99, {"good": "ok"})
GOOD_FRAME = encode(GOOD)


def frame_body(body: bytes, version: int = FRAME_VERSION, length: int = -1) -> bytes:
    """A frame around raw ``body`` bytes with a correct CRC (length may lie)."""
    header = HEADER.pack(MAGIC, version, len(body) if length < 0 else length)
    return header + body + TRAILER.pack(zlib.crc32(header[2:] + body))


def frame_obj(obj: Any) -> bytes:
    """A frame with a correct CRC around any msgpack-able object."""
    return frame_body(msgpack.packb(obj, use_bin_type=True))


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    cuts = [0] + sorted(points) + [len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]
