"""The libvirt side of the witnesses: thin, blocking calls run off the event loop.

Each function here makes one libvirt call (or a short, fixed sequence) and
turns its result or error into the plain readings of :mod:`host_relay.witnesses`.
They block: ``qemuAgentCommand`` waits up to its timeout, a stuck libvirtd
blocks anything; :class:`WitnessReader` runs them on a small thread pool so the
relay's event loop never waits for them.

What the domain XML says is parsed here too (sans-I/O): whether it has the
``org.qemu.guest_agent.0`` channel and whether libvirt sees qemu-ga connected
(the ``state`` attribute of the channel's target, from QEMU's VSERPORT_CHANGE),
and where the guest console log is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, Optional

from host_relay.witnesses import PingOutcome, PingReading, ProgressSample

LOG = logging.getLogger(__name__)

AGENT_CHANNEL = "org.qemu.guest_agent.0"
PING = '{"execute":"guest-ping"}'
# libvirt error codes (virterror.h), so the classification is testable without libvirt.
ERR_OPERATION_INVALID = 55  # domain not running
ERR_NO_DOMAIN = 42
ERR_OPERATION_TIMEOUT = 68
ERR_ARGUMENT_UNSUPPORTED = 74  # "QEMU guest agent is not configured"
ERR_AGENT_UNRESPONSIVE = 86  # "not connected", or no answer within the timeout
# VIR_DOMAIN_STATS_* and VIR_CONNECT_GET_ALL_DOMAINS_STATS_* flags used by bulk_progress.
STATS_VCPU, STATS_INTERFACE, STATS_BLOCK = 8, 16, 32
STATS_ACTIVE = 1


# -- domain XML (sans-I/O) ---------------------------------------------------------------------

def agent_channel_state(xml: str) -> Optional[str]:
    """None without a qemu-ga channel; else the target's state ("connected",
    "disconnected", or "" when libvirt does not track it)."""
    root = ET.fromstring(xml)  # noqa: S314 (libvirt's own XML, not the guest's)
    for channel in root.findall("./devices/channel"):
        target = channel.find("target")
        if target is not None and target.get("name") == AGENT_CHANNEL:
            return target.get("state", "")
    return None


def console_log_path(xml: str) -> Optional[str]:
    """The file the guest console is written to, if the domain XML names one.

    Nova writes either ``<serial type='file'><source path='.../console.log'/>``
    or a pty console with ``<log file='.../console.log'/>``.
    """
    root = ET.fromstring(xml)  # noqa: S314 (libvirt's own XML, not the guest's)
    for kind in ("serial", "console"):
        for dev in root.findall(f"./devices/{kind}"):
            log = dev.find("log")
            if log is not None and log.get("file"):
                return log.get("file")
            source = dev.find("source")
            if dev.get("type") == "file" and source is not None and source.get("path"):
                return source.get("path")
    return None


def classify_ping_error(code: int, message: str, took: float, timeout: float) -> PingReading:
    """A libvirt error from qemuAgentCommand as a reading."""
    lowered = message.lower()
    if code == ERR_ARGUMENT_UNSUPPORTED or "not configured" in lowered:
        return PingReading(PingOutcome.NO_CHANNEL, took, message)
    if code == ERR_AGENT_UNRESPONSIVE and "not connected" in lowered:
        return PingReading(PingOutcome.NOT_CONNECTED, took, message)
    if code in (ERR_AGENT_UNRESPONSIVE, ERR_OPERATION_TIMEOUT):
        # An error that came back well before the timeout is not the agent being silent.
        if took >= 0.5 * timeout:
            return PingReading(PingOutcome.TIMED_OUT, took, message)
    return PingReading(PingOutcome.ERROR, took, f"[{code}] {message}")


# -- blocking calls ----------------------------------------------------------------------------

def ping_agent(dom: Any, timeout: int, clock: Callable[[], float] = time.monotonic
               ) -> PingReading:
    """guest-ping through libvirt, waiting at most ``timeout`` seconds. Blocks."""
    import libvirt
    import libvirt_qemu

    started = clock()
    try:
        state = agent_channel_state(dom.XMLDesc(0))
    except libvirt.libvirtError as exc:
        return PingReading(PingOutcome.ERROR, clock() - started,
                           f"[{exc.get_error_code()}] {exc}")
    if state is None:
        return PingReading(PingOutcome.NO_CHANNEL, clock() - started, "no qemu-ga channel")
    if state == "disconnected":
        return PingReading(PingOutcome.NOT_CONNECTED, clock() - started,
                           "qemu-ga channel disconnected")
    sent = clock()
    try:
        libvirt_qemu.qemuAgentCommand(dom, PING, timeout, 0)
    except libvirt.libvirtError as exc:
        took = clock() - sent
        return classify_ping_error(exc.get_error_code() or 0, str(exc), took, timeout)
    return PingReading(PingOutcome.ANSWERED, clock() - sent)


def bulk_progress(conn: Any) -> Optional[dict[str, ProgressSample]]:
    """vCPU, block and network counters of every running domain in one call.

    None when this libvirt has no bulk stats (before 1.2.8) or refuses them.
    """
    import libvirt

    if not hasattr(conn, "getAllDomainStats"):
        return None
    try:
        records = conn.getAllDomainStats(STATS_VCPU | STATS_BLOCK | STATS_INTERFACE,
                                         STATS_ACTIVE)
    except libvirt.libvirtError as exc:
        LOG.warning("bulk domain stats unavailable: %s", exc)
        return None
    return {dom.UUIDString(): ProgressSample.from_stats(stats) for dom, stats in records}


def inject_nmi(dom: Any) -> None:
    """Send an NMI to the guest (kdump takes over in guests set up for it). Blocks."""
    dom.injectNMI(0)


def register_quiet_errors() -> None:
    """Stop libvirt printing every error to stderr; they are raised and classified here.

    The relay does the same when it registers its event loop (libvirt_watch).
    """
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class WitnessReader:
    """Runs the blocking witness calls on a small pool, never on the event loop.

    ``max_workers`` bounds how many pings can block at once: a host-wide stall
    (a stuck libvirtd) ties up that many threads, no more.
    """

    def __init__(self, max_workers: int = 4) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="iim-witness")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    async def ping(self, dom: Any, timeout: int) -> PingReading:
        return await self.run(ping_agent, dom, timeout)

    async def progress(self, conn: Any) -> Optional[dict[str, ProgressSample]]:
        return await self.run(bulk_progress, conn)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
