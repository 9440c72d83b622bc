"""The fuzz target shared by the hypothesis run and the atheris run: guest bytes through
iim_protocol's Decoder into a host_relay Detector, with the invariants checked after
every step.

What a hostile guest controls is the byte stream and its timing; the relay
controls the clock, the channel opening and closing, and the ticks.  A
:class:`Harness` plays the relay's side with a simulated monotonic clock: it
feeds chunks to the decoder, hands every decoded message to the detector,
advances the clock and ticks, and checks after each call that

- nothing raised (the caller sees the exception: that is a crash);
- the decoder holds less than one maximum frame and returned no more messages
  than the bytes could carry;
- the detector returned a bounded number of outputs, each of bounded size;
- the detector never notified more often than its restart-storm cap allows in
  any window (``max_notifications`` per ``notification_window``).

Only the detector's stable surface is used: ``Detector(config, now)`` (or the
v1 ``Detector(instance_uuid, config, now)``), ``message``, ``tick``,
``channel_connected`` and ``channel_closed``.
"""

from __future__ import annotations

import inspect
import struct
import zlib
from collections.abc import Iterable

import msgpack

from host_relay import detector as detector_module
from iim_protocol.codec import FRAME_VERSION, HEADER, MAGIC, MAX_BODY, MAX_FRAME, Decoder, encode
from iim_protocol.messages import Failure, Goodbye, Heartbeat, Hello, Pause, Recovered, Resume

INSTANCE = "6f1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
MIN_FRAME = HEADER.size + 1 + 4  # header, a one-byte body, crc
MAX_OUTPUTS_PER_CALL = 64
MAX_OUTPUT_REPR = 4096

try:  # where the detector's configuration lives once the relay core v2 is merged
    from host_relay.detector_config import DetectorConfig  # type: ignore[import-not-found]
except ImportError:
    DetectorConfig = detector_module.DetectorConfig

# Short timers, so hangs, cooldowns and the storm cap are reached within a few
# simulated minutes; each falls back to the default if a bound refuses it.
FAST_CONFIG = {"missed_heartbeats": 3, "min_uptime": 1.0, "cooldown": 5.0,
               "max_notifications": 3, "notification_window": 60.0}

# Valid messages: the bricks of mutated frames.
SAMPLES = (
    Hello(protocol_version=1, agent_version="1.0", boot_id="boot-1", heartbeat_interval=1.0,
          checks=("web", "db")),
    Hello(protocol_version=1, agent_version="1.0", boot_id="boot-2", heartbeat_interval=0.5),
    Heartbeat(seq=1, checks=(("web", "ok"), ("db", "ok"))),
    Heartbeat(seq=2, checks=(("web", "failed"),)),
    Failure(seq=3, check="web", reason="nginx exited 137"),
    Recovered(seq=4, check="web"),
    Goodbye(reason="shutdown"),
    Pause(duration=30.0, reason="maintenance"),
    Resume(),
)
FRAMES = tuple(encode(m) for m in SAMPLES)


def frame(body: bytes) -> bytes:
    """A frame with a good CRC around any body (up to MAX_BODY bytes)."""
    body = body[:MAX_BODY]
    header = HEADER.pack(MAGIC, FRAME_VERSION, len(body))
    return header + body + struct.pack(">I", zlib.crc32(header[2:] + body))


def bombs() -> list[bytes]:
    """msgpack bodies that cost a naive decoder memory or time, each in a good frame."""
    deep_list = b"\x91" * (MAX_BODY - 1) + b"\xc0"  # 4095-deep nested arrays
    deep_map = b"\x81\xa1k" * (MAX_BODY // 3 - 1) + b"\xc0"
    return [frame(b) for b in (
        deep_list,
        deep_map,
        b"\xdd\xff\xff\xff\xff",  # array32 declaring 4 G elements
        b"\xdf\xff\xff\xff\xff",  # map32 declaring 4 G pairs
        b"\xdb\xff\xff\xff\xff" + b"x" * 16,  # str32 declaring 4 G bytes
        b"\xc6\xff\xff\xff\xff",  # bin32 declaring 4 G bytes
        b"\xc9\xff\xff\xff\xff\x01",  # ext32 declaring 4 G bytes
        b"\x82\xa1t\xa5hello\xa1t\xa5hello",  # duplicate key
        msgpack.packb({"t": "heartbeat", "seq": 2**64 - 1, "checks": {}}),
        msgpack.packb({"t": "hello", "v": 1, "x": [[[[[]]]]] * 300}),
        msgpack.packb([1.5e308, -0.0, float("nan"), float("inf")]),
    )]


BOMBS = tuple(bombs())


class Harness:
    """One channel's worth of relay: a decoder, a detector, a simulated clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.config = _config()
        self.decoder = Decoder()
        self.detector = _detector(self.config, self.now)
        self.fed = 0
        self.messages = 0
        self.calls = 0
        self.notified: list[float] = []

    # -- the relay's side -----------------------------------------------------

    def feed(self, data: bytes) -> None:
        before = self.decoder.buffered
        messages = self.decoder.feed(data)
        self.fed += len(data)
        assert self.decoder.buffered < MAX_FRAME, self.decoder.buffered
        assert len(messages) <= (before + len(data)) // MIN_FRAME, (len(messages), len(data))
        assert self.decoder.stats.bytes_received == self.fed
        for msg in messages:
            self.messages += 1
            self._outputs(self.detector.message(msg, self.now))

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        self._outputs(self.detector.tick(self.now))

    def connect(self) -> None:
        self._outputs(self.detector.channel_connected(self.now))

    def close(self) -> None:
        self.decoder.reset()
        self._outputs(self.detector.channel_closed(self.now))

    # -- invariants ------------------------------------------------------------

    def _outputs(self, outputs: Iterable[object]) -> None:
        self.calls += 1
        outputs = list(outputs)
        assert len(outputs) <= MAX_OUTPUTS_PER_CALL, outputs[:5]
        for out in outputs:
            assert len(repr(out)) <= MAX_OUTPUT_REPR, repr(out)[:200]
            if type(out).__name__ == "Notify":
                # When the detector decided (a timer runs at its own deadline, which
                # may be before the call's now), not when the call returned.
                self.notified.append(float(getattr(out, "at", self.now)))
        window = float(getattr(self.config, "notification_window", 0) or 0)
        cap = int(getattr(self.config, "max_notifications", 0) or 0)
        if window and cap and self.notified:
            newest = max(self.notified)  # checked at every notification: covers every window
            recent = [t for t in self.notified if t > newest - window]
            assert len(recent) <= cap, (recent, cap, window)


def _config():
    try:
        return DetectorConfig(**FAST_CONFIG)
    except (TypeError, ValueError):
        return DetectorConfig()


def _detector(config, now: float):
    params = inspect.signature(detector_module.Detector).parameters
    if "instance_uuid" in params:  # the v1 detector knows its instance
        return detector_module.Detector(INSTANCE, config, now)
    return detector_module.Detector(config, now)


def run_ops(ops: Iterable[tuple[str, object]]) -> Harness:
    """Play ``ops`` (("feed", bytes) | ("advance", seconds) | ("connect"|"close", None))."""
    h = Harness()
    h.connect()
    for op, arg in ops:
        if op == "feed":
            h.feed(arg)  # type: ignore[arg-type]
        elif op == "advance":
            h.advance(arg)  # type: ignore[arg-type]
        elif op == "connect":
            h.connect()
        elif op == "close":
            h.close()
    h.advance(3600.0)  # every timer the inputs set runs out
    return h
