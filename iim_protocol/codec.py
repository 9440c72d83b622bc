"""Framing for iim messages: sans-I/O, like h11's ``Connection``.

``encode(message)`` returns the bytes of one frame.  A :class:`Decoder` is fed
whatever bytes arrived and returns the messages they completed; it keeps no
more than one maximum frame of state and never raises on input.  Everything it
throws away is counted in :class:`DecoderStats`, by reason.

Frame layout (all integers big-endian)::

    +--------+---------+--------+----------------+--------+
    | magic  | version | length | msgpack body   | crc32  |
    | 2 B    | 1 B     | 2 B    | length B       | 4 B    |
    +--------+---------+--------+----------------+--------+

``crc32`` covers version, length and body.  After garbage, a truncated
frame, a bad length, a bad checksum or a body that is not a valid message,
the decoder resynchronises at the next magic and counts what it skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
import zlib
from typing import Any, Dict, List

import msgpack

from iim_protocol.messages import InvalidMessage, Message, message_from_wire

# 0xC1 is the one byte msgpack never emits, so the magic cannot start inside a
# well-formed body of ours; 0x49 is "I".
MAGIC = b"\xc1\x49"
FRAME_VERSION = 1
HEADER = struct.Struct(">2sBH")
TRAILER = struct.Struct(">I")
# A few KiB: every valid message fits with room to spare, and a frame stays far
# under virtio-serial's ~32 KiB single-write limit.  It also bounds the
# decoder's memory per channel.
MAX_BODY = 4096
MAX_FRAME = HEADER.size + MAX_BODY + TRAILER.size

# Counter keys for rejected frames (besides InvalidMessage.reason values).
REJECT_BAD_VERSION = "bad_version"
REJECT_OVERSIZE = "oversize"
REJECT_BAD_CRC = "bad_crc"
REJECT_BAD_BODY = "bad_body"


class EncodeError(ValueError):
    """A message that cannot be framed (larger than MAX_BODY)."""


def encode(message: Message) -> bytes:
    """Return one complete frame carrying ``message``."""
    body = msgpack.packb(message.to_wire(), use_bin_type=True)
    if len(body) > MAX_BODY:
        raise EncodeError(f"{message.TYPE} body is {len(body)} bytes, over {MAX_BODY}")
    header = HEADER.pack(MAGIC, FRAME_VERSION, len(body))
    crc = zlib.crc32(header[2:] + body)
    return header + body + TRAILER.pack(crc)


@dataclasses.dataclass
class DecoderStats:
    """What a decoder has seen.  Mutable counters, read by status and metrics."""

    bytes_received: int = 0
    bytes_skipped: int = 0
    frames_ok: int = 0
    unknown_fields: int = 0
    rejected: Dict[str, int] = dataclasses.field(default_factory=collections.Counter)

    @property
    def frames_rejected(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> Dict[str, Any]:
        return {
            "bytes_received": self.bytes_received,
            "bytes_skipped": self.bytes_skipped,
            "frames_ok": self.frames_ok,
            "frames_rejected": self.frames_rejected,
            "unknown_fields": self.unknown_fields,
            "rejected": dict(self.rejected),
        }


class Decoder:
    """Turns a byte stream into messages.  Bytes in, messages out, no I/O."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = DecoderStats()

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame (at most MAX_FRAME - 1)."""
        return len(self._buf)

    def feed(self, data: bytes) -> List[Message]:
        """Consume ``data``; return every message it completed, in order."""
        out: List[Message] = []
        view = memoryview(data)
        self.stats.bytes_received += len(view)
        pos = 0
        while pos < len(view):
            # Take no more than fits one frame, so the buffer stays bounded
            # however much arrives at once.
            take = MAX_FRAME - len(self._buf)
            self._buf += view[pos : pos + take]
            pos += take
            self._parse(out)
        return out

    def reset(self) -> None:
        """Forget a partial frame (the stream was broken, e.g. a reconnect)."""
        self._skip(len(self._buf))

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self.stats.bytes_skipped += n

    def _reject(self, reason: str) -> None:
        self.stats.rejected[reason] += 1

    def _parse(self, out: List[Message]) -> None:
        buf = self._buf
        while buf:
            start = buf.find(MAGIC)
            if start < 0:
                # Keep a trailing first magic byte: the second may come next.
                keep = 1 if buf[-1] == MAGIC[0] else 0
                self._skip(len(buf) - keep)
                return
            if start:
                self._skip(start)
            if len(buf) < HEADER.size:
                return
            _, version, length = HEADER.unpack_from(buf)
            if version != FRAME_VERSION:
                self._reject(REJECT_BAD_VERSION)
                self._skip(1)
                continue
            if length > MAX_BODY:
                self._reject(REJECT_OVERSIZE)
                self._skip(1)
                continue
            end = HEADER.size + length
            if len(buf) < end + TRAILER.size:
                return  # wait for the rest; this is at most MAX_FRAME bytes
            (crc,) = TRAILER.unpack_from(buf, end)
            if crc != zlib.crc32(memoryview(buf)[2:end]):
                # Likely a truncated frame followed by another one, or noise:
                # step past this magic and look for the next.
                self._reject(REJECT_BAD_CRC)
                self._skip(1)
                continue
            body = bytes(buf[HEADER.size : end])
            del buf[: end + TRAILER.size]
            self._decode_body(body, out)

    def _decode_body(self, body: bytes, out: List[Message]) -> None:
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
        except Exception:  # noqa: BLE001 - any malformed body is counted, never raised
            self._reject(REJECT_BAD_BODY)
            return
        try:
            message, unknown = message_from_wire(obj)
        except InvalidMessage as exc:
            self._reject(exc.reason)
            return
        self.stats.frames_ok += 1
        self.stats.unknown_fields += unknown
        out.append(message)
