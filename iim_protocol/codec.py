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
the decoder resynchronises at the next magic and counts what it skipped.  A
frame whose declared length is still incomplete is given up ("truncated") as
soon as a complete frame with a good checksum starts inside it, so a frame
cut short does not hold back the good frames that follow it.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import struct
import zlib
from typing import Any

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
# What the agent accepts from the host: a ``sync`` body is 11 bytes; the rest
# leaves room for a few fields a later version may add, and nothing more.
MAX_HOST_BODY = 64

# Counter keys for rejected frames (besides InvalidMessage.reason values).
REJECT_BAD_VERSION = "bad_version"
REJECT_OVERSIZE = "oversize"
REJECT_BAD_CRC = "bad_crc"
REJECT_BAD_BODY = "bad_body"
REJECT_TRUNCATED = "truncated"
REJECT_DUPLICATE_KEY = "duplicate_key"


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
    rejected: dict[str, int] = dataclasses.field(default_factory=collections.Counter)

    @property
    def frames_rejected(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes_received": self.bytes_received,
            "bytes_skipped": self.bytes_skipped,
            "frames_ok": self.frames_ok,
            "frames_rejected": self.frames_rejected,
            "unknown_fields": self.unknown_fields,
            "rejected": dict(self.rejected),
        }


class _DuplicateKey(ValueError):
    pass


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    # msgpack would keep the last of two equal keys; a map that says two things
    # at once (e.g. a check both "ok" and "failed") is refused instead.
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey("map has a duplicate key")
    return out


class Decoder:
    """Turns a byte stream into messages.  Bytes in, messages out, no I/O.

    ``max_body`` (at most :data:`MAX_BODY`) lowers the largest body accepted:
    a longer frame is rejected as ``oversize`` at its header, and the buffer
    never holds more than one such smaller frame.  The agent decodes what the
    host sends with ``max_body=MAX_HOST_BODY``.
    """

    def __init__(self, max_body: int = MAX_BODY) -> None:
        if isinstance(max_body, bool) or not isinstance(max_body, int):
            raise TypeError("max_body must be an integer")
        if not 0 <= max_body <= MAX_BODY:
            raise ValueError(f"max_body must be within [0, {MAX_BODY}]")
        self.max_body = max_body
        self.max_frame = HEADER.size + max_body + TRAILER.size
        self._buf = bytearray()
        self.stats = DecoderStats()
        # Look-ahead while the frame at the start of the buffer is incomplete:
        # stream offsets of later candidate frames as a heap of (end, start),
        # each pushed and popped once, so a hostile stream costs no more than
        # the plain resynchronisation does.
        self._base = 0  # stream offset of self._buf[0]
        self._scanned = 0  # stream offset up to which later magics are in _ahead
        self._ahead: list[tuple[int, int]] = []

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame (at most max_frame - 1)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data``; return every message it completed, in order."""
        out: list[Message] = []
        view = memoryview(data)
        self.stats.bytes_received += len(view)
        pos = 0
        while pos < len(view):
            # Take no more than fits one frame, so the buffer stays bounded
            # however much arrives at once.
            take = self.max_frame - len(self._buf)
            self._buf += view[pos : pos + take]
            pos += take
            self._parse(out)
        return out

    def reset(self) -> None:
        """Forget a partial frame (the stream was broken, e.g. a reconnect)."""
        self._skip(len(self._buf))
        self._ahead.clear()
        self._scanned = self._base

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self._base += n
        self.stats.bytes_skipped += n

    def _reject(self, reason: str) -> None:
        self.stats.rejected[reason] += 1

    def _parse(self, out: list[Message]) -> None:
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
            if length > self.max_body:
                self._reject(REJECT_OVERSIZE)
                self._skip(1)
                continue
            end = HEADER.size + length
            if len(buf) < end + TRAILER.size:
                later = self._later_frame()
                if later:
                    # A complete, intact frame starts inside this one: this
                    # one was cut short (a writer restarted mid-frame) or is
                    # noise.  Do not hold the good frame back.
                    self._reject(REJECT_TRUNCATED)
                    self._skip(later)
                    continue
                return  # wait for the rest; this is at most max_frame bytes
            (crc,) = TRAILER.unpack_from(buf, end)
            if crc != zlib.crc32(memoryview(buf)[2:end]):
                # Likely a truncated frame followed by another one, or noise:
                # step past this magic and look for the next.
                self._reject(REJECT_BAD_CRC)
                self._skip(1)
                continue
            body = bytes(buf[HEADER.size : end])
            del buf[: end + TRAILER.size]
            self._base += end + TRAILER.size
            self._decode_body(body, out)

    def _later_frame(self) -> int:
        """Buffer offset of a complete frame with a good CRC after offset 0, or 0."""
        buf = self._buf
        base = self._base
        pos = max(self._scanned - base, 1)
        while True:
            q = buf.find(MAGIC, pos)
            if q < 0:
                # The last byte may be the first half of a magic.
                self._scanned = base + max(len(buf) - 1, 1)
                break
            if q + HEADER.size > len(buf):
                self._scanned = base + q  # header incomplete: look again later
                break
            _, version, length = HEADER.unpack_from(buf, q)
            if version == FRAME_VERSION and length <= self.max_body:
                end = q + HEADER.size + length + TRAILER.size
                heapq.heappush(self._ahead, (base + end, base + q))
            pos = q + 1
        while self._ahead and self._ahead[0][0] <= base + len(buf):
            end, start = (n - base for n in heapq.heappop(self._ahead))
            if start <= 0:
                continue  # already skipped or consumed
            (crc,) = TRAILER.unpack_from(buf, end - TRAILER.size)
            if crc == zlib.crc32(memoryview(buf)[start + 2 : end - TRAILER.size]):
                return start
        return 0

    def _decode_body(self, body: bytes, out: list[Message]) -> None:
        try:
            obj = msgpack.unpackb(
                body,
                raw=False,
                strict_map_key=True,
                use_list=True,
                object_pairs_hook=_unique_map,
            )
        except _DuplicateKey:
            self._reject(REJECT_DUPLICATE_KEY)
            return
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
