"""One record per instance the relay knows, and the table that keeps them.

An :class:`Instance` holds everything the relay knows about one instance:
who says where its channel is (origin claims), the domain's state from
libvirt, its failure detector (or the stored record a detector will be
restored from), the open channel connection, and since when it has been
gone.  :class:`InstanceTable` is the only place that creates and forgets
them; it arbitrates the claims (libvirt's beats a socket found in the
directory) and forgets an instance that has been gone for a whole
notification window, so memory and the stored records stay bounded.

The detector outlives its channel: QEMU re-creates the socket when Masakari
restarts the instance, and the cooldown and storm-cap history must survive
that (and, through the stored record, a relay restart).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any, Optional

from host_relay.domains import ORIGIN_SOCKET_DIR
from host_relay.log_budget import LogBudget

LOG = logging.getLogger(__name__)

SOURCE_LIBVIRT = "libvirt"
SOURCE_SOCKET_DIR = "socket_dir"
_PRECEDENCE = (SOURCE_LIBVIRT, SOURCE_SOCKET_DIR)  # the first claim present wins


@dataclasses.dataclass(eq=False)
class Instance:
    uuid: str
    # source -> (channel path, origin): who says where the channel is.
    claims: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    domain: Any = None  # a DomainState from libvirt; None: libvirt never said
    detector: Any = None  # made when the instance first gets a channel
    restored: Any = None  # a DetectorRecord from the store, until the detector exists
    conn: Any = None  # the ChannelConnection while there is a channel
    gone_since: Optional[float] = None  # no claim (monotonic), None while claimed
    # Guest-caused log lines: each kind once a minute, the rest counted (host_relay.log_budget).
    log_budget: LogBudget = dataclasses.field(default_factory=LogBudget)
    # The witnesses (host_relay.silence_watch): when to ask and what their verdict meant.
    judge: Any = None  # a witness_decision.SilenceJudge, made when it first goes silent
    # Detector outputs held while the evidence of a hang is kept (a few seconds at
    # most), written in order after it: None when nothing is held.
    held_outputs: Optional[list] = None

    def wanted(self) -> Optional[tuple[str, str]]:
        """(path, origin) of the channel to read, from the winning claim."""
        for source in _PRECEDENCE:
            if source in self.claims:
                return self.claims[source]
        return None

    @property
    def origin(self) -> Optional[str]:
        want = self.wanted()
        return None if want is None else want[1]


class InstanceTable:
    """Instances by uuid; the one owner of their life cycle."""

    def __init__(self, forget_after: float) -> None:
        self.forget_after = float(forget_after)
        self._by_uuid: dict[str, Instance] = {}

    def __iter__(self) -> Iterator[Instance]:
        return iter(list(self._by_uuid.values()))

    def __len__(self) -> int:
        return len(self._by_uuid)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._by_uuid

    def get(self, uuid: str) -> Optional[Instance]:
        return self._by_uuid.get(uuid)

    def ensure(self, uuid: str, now: float) -> Instance:
        inst = self._by_uuid.get(uuid)
        if inst is None:
            inst = self._by_uuid[uuid] = Instance(uuid, gone_since=now)
        return inst

    def restore(self, records: dict[str, Any], now: float) -> None:
        """Instances from stored detector records; gone until something claims them."""
        for uuid, record in records.items():
            self.ensure(uuid, now).restored = record

    def claim(self, uuid: str, source: str, path: str, origin: str, now: float) -> Instance:
        inst = self.ensure(uuid, now)
        inst.claims[source] = (path, origin)
        inst.gone_since = None
        return inst

    def release(self, uuid: str, source: str, now: float) -> Optional[Instance]:
        inst = self._by_uuid.get(uuid)
        if inst is None:
            return None
        inst.claims.pop(source, None)
        if not inst.claims and inst.gone_since is None:
            inst.gone_since = now
        return inst

    def connected(self) -> Iterator[Instance]:
        return (i for i in self._by_uuid.values() if i.conn is not None)

    def expired(self, now: float) -> list[Instance]:
        """Forget instances gone for ``forget_after``; returns them (their records go too)."""
        gone = [i for i in self._by_uuid.values()
                if i.gone_since is not None and i.conn is None
                and now - i.gone_since >= self.forget_after and not host_paused(i, now)]
        for inst in gone:
            del self._by_uuid[inst.uuid]
        if gone:
            LOG.info("Forgot %d instances gone for %.0fs or more", len(gone), self.forget_after)
        return gone


def host_paused(inst: Instance, now: float) -> bool:
    """The operator paused it (`iim-relay pause`) and the pause still holds: kept until
    it ends, even when the instance has been gone longer than ``forget_after``."""
    record = inst.restored if inst.detector is None else inst.detector.record()
    until = getattr(record, "host_pause_until", None)
    return until is not None and until > now


def origin_of(inst: Optional[Instance]) -> str:
    return (inst.origin if inst is not None else None) or ORIGIN_SOCKET_DIR
