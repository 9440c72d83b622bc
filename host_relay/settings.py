"""The relay's settings as plain values.

Entry points read oslo.config once and build a :class:`RelaySettings`; every
constructor below takes values from it, so nothing deep in the relay reads the
global ``CONF``.  Bounds are enforced by the oslo options (``min=``/``max=``);
this dataclass only groups the values.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class ChannelSettings:
    socket_dir: str = "/var/lib/iim/channels"
    reconnect_initial: float = 0.5  # first retry after a refused/closed socket
    reconnect_max: float = 30.0  # backoff cap
    read_chunk: int = 4096  # bytes per read() call
    max_bytes_per_second: int = 65536  # per channel; excess is dropped unread and counted
    max_frames_per_second: int = 200  # per channel; excess frames are counted and ignored


@dataclasses.dataclass(frozen=True)
class DeliverySettings:
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    jitter: float = 0.2
    request_timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    host: str
    state_path: str = "/var/lib/iim"
    shutdown_grace: float = 5.0
    channels: ChannelSettings = dataclasses.field(default_factory=ChannelSettings)
    delivery: DeliverySettings = dataclasses.field(default_factory=DeliverySettings)

    @property
    def outbox_path(self) -> str:
        return os.path.join(self.state_path, "outbox.sqlite")

    @property
    def control_socket(self) -> str:
        return os.path.join(self.state_path, "control.sock")
