"""The witnesses' libvirt adapter against the real private libvirtd + QEMU (TCG).

Domains here run no guest OS (SeaBIOS finds nothing to boot), which is what
the degraded paths need: a qemu-ga channel nobody in the guest opened, a
domain without one, a domain without a display.  The answered and timed-out
pings need a real guest: tests/host_relay/test_libvirt_vm_witnesses.py.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid as uuidlib

import libvirt
import pytest

from host_relay.evidence import (
    CONSOLE,
    NOTE,
    SCREEN,
    EvidenceError,
    EvidenceStore,
    collect,
    screenshot,
)
from host_relay.witness_libvirt import WitnessReader, bulk_progress, ping_agent
from host_relay.witnesses import PingOutcome, ProgressSample, Unknown, ping_verdict
from tests.host_relay.libvirt_fixture import DomainSpec

pytestmark = pytest.mark.libvirt

LOOP_STEP = 0.01


def new_spec(**kw) -> DomainSpec:
    u = str(uuidlib.uuid4())
    return DomainSpec(name=f"w-{u[:8]}", uuid=u, **kw)


async def _loop_lag(stop: asyncio.Event) -> float:
    """Largest delay of a 10 ms timer while ``stop`` is unset: how long the loop was blocked."""
    worst = 0.0
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(LOOP_STEP)
        worst = max(worst, time.monotonic() - before - LOOP_STEP)
    return worst


def test_ping_without_an_answering_agent_or_without_a_channel_is_a_clean_unknown(
        libvirt_domains) -> None:
    daemon, domains = libvirt_domains
    with_channel = daemon.start_domain(new_spec())
    without = daemon.start_domain(new_spec(agent_channel=False))
    domains += [with_channel, without]
    reader = WitnessReader(max_workers=2)

    async def run():
        stop = asyncio.Event()
        lag = asyncio.create_task(_loop_lag(stop))
        readings = await asyncio.gather(reader.ping(with_channel, 2), reader.ping(without, 2))
        stop.set()
        return readings, await lag

    try:
        (a, b), lag = asyncio.run(run())
    finally:
        reader.close()
    # No qemu-ga in the guest: libvirt sees the channel disconnected and we do not even ask.
    assert a.outcome is PingOutcome.NOT_CONNECTED, a
    assert b.outcome is PingOutcome.NO_CHANNEL, b
    assert ping_verdict(a) == Unknown("qemu-guest-agent is not connected")
    assert ping_verdict(b) == Unknown("no qemu-guest-agent channel")
    assert a.took < 2.0 and b.took < 2.0
    print(f"\n[witness] not-connected ping {a.took * 1000:.1f} ms, no-channel "
          f"{b.took * 1000:.1f} ms, loop lag at most {lag * 1000:.1f} ms")

    # Asked anyway (the XML said connected a moment ago): libvirt's refusal is classified.
    import libvirt_qemu
    for dom, outcome in ((with_channel, PingOutcome.NOT_CONNECTED),
                         (without, PingOutcome.NO_CHANNEL)):
        with pytest.raises(libvirt.libvirtError) as err:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 1, 0)
        from host_relay.witness_libvirt import classify_ping_error
        got = classify_ping_error(err.value.get_error_code(), str(err.value), 0.0, 1)
        assert got.outcome is outcome, (got, str(err.value))


def test_ping_of_a_domain_that_is_gone_is_an_error_not_a_hang(libvirt_domains) -> None:
    daemon, domains = libvirt_domains
    dom = daemon.start_domain(new_spec())
    domains.append(dom)
    dom.destroy()
    dom.undefine()
    got = ping_agent(dom, 1)
    assert got.outcome is PingOutcome.ERROR and isinstance(ping_verdict(got), Unknown), got


@pytest.mark.slow
def test_bulk_stats_read_every_running_domain_in_one_call(libvirt_domains) -> None:
    daemon, domains = libvirt_domains
    specs = [new_spec() for _ in range(3)]
    domains += [daemon.start_domain(s) for s in specs]
    started = time.monotonic()
    got = bulk_progress(daemon.conn)
    took = time.monotonic() - started
    assert got is not None
    assert {s.uuid for s in specs} <= set(got)
    for s in specs:
        sample = got[s.uuid]
        assert isinstance(sample, ProgressSample)
        assert sample.vcpu_ns is not None and sample.vcpu_ns >= 0
        assert sample.block_ops == 0 and sample.net_packets == 0  # no disks, no NICs
    # vCPU time grows while SeaBIOS idles: the reading moves.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        later = bulk_progress(daemon.conn)
        if later[specs[0].uuid].vcpu_ns > got[specs[0].uuid].vcpu_ns:
            break
    else:
        raise AssertionError("vCPU time did not move within 10 s")
    print(f"\n[witness] getAllDomainStats for {len(got)} domains: {took * 1000:.1f} ms")


def test_evidence_screenshot_and_console_log_saved_and_bounded(libvirt_domains, tmp_path) -> None:
    daemon, domains = libvirt_domains
    vmdir = daemon.socket_dir("ev")
    log = os.path.join(vmdir, "console.log")
    spec = new_spec(video=True, console_log=log)
    dom = daemon.start_domain(spec)
    domains.append(dom)
    store = EvidenceStore(str(tmp_path / "evidence"), max_per_instance=2,
                          max_total_bytes=10 * 1024 * 1024)
    took = []
    saved = []
    for i in range(3):
        started = time.monotonic()
        saved.append(collect(store, daemon.conn, dom, spec.uuid, console_lines=20,
                             wall=lambda i=i: 1_800_000_000.0 + i))
        took.append(time.monotonic() - started)
    last = saved[-1]
    assert last.path is not None and set(last.files) == {SCREEN, CONSOLE}, last
    assert last.problems == ()
    png = open(os.path.join(last.path, SCREEN), "rb").read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 100
    assert os.path.exists(os.path.join(last.path, NOTE))
    assert [os.path.basename(p) for p in store.list(spec.uuid)] == [
        os.path.basename(saved[1].path), os.path.basename(saved[2].path)]
    with pytest.raises(EvidenceError, match="larger than 100 bytes"):
        screenshot(daemon.conn, dom, max_bytes=100)
    print(f"\n[witness] evidence (screenshot {len(png)} bytes + console tail) in "
          f"{max(took) * 1000:.0f} ms at most")


def test_evidence_without_a_display_or_console_log_says_why(libvirt_domains, tmp_path) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec()  # no video, no console log
    dom = daemon.start_domain(spec)
    domains.append(dom)
    store = EvidenceStore(str(tmp_path / "evidence"), 2, 10 * 1024 * 1024)
    got = collect(store, daemon.conn, dom, spec.uuid, console_lines=20, inject_nmi=True)
    assert got.files == ()
    assert any("no screens" in p for p in got.problems), got.problems
    assert "no console log: the domain XML names none" in got.problems
    # Even with nothing taken, the note says what was tried; the NMI still went in.
    assert got.path is not None and os.listdir(got.path) == [NOTE]
    assert got.nmi_injected, got.problems


# A boot sector that reports a panic to pvpanic (if there is one), then stops its vCPU:
#   mov dx,0x505; mov al,1; out dx,al     ; pvpanic: "guest panicked"
#   halt: cli; hlt; jmp halt              ; interrupts off: the vCPU never runs again
PANIC_AND_STOP = bytes.fromhex("ba0505b001eefaf4ebfc")


def stopping_disk(daemon, name: str) -> str:
    boot = PANIC_AND_STOP.ljust(510, b"\0") + b"\x55\xaa"
    return daemon.own_file(os.path.join(daemon.base, f"{name}.img"), boot.ljust(1 << 20, b"\0"))


def _witnesses(tmp_path, **kw):
    from host_relay.settings import WitnessSettings
    from host_relay.witness_service import Witnesses
    return Witnesses(WitnessSettings(**kw), str(tmp_path / "evidence"))


async def _attached(daemon, witnesses):
    from host_relay.libvirt_watch import register_event_impl
    register_event_impl(asyncio.get_running_loop())
    conn = libvirt.open(daemon.uri)
    witnesses.attach(conn, libvirt)
    return conn


def test_pvpanic_crash_event_confirms_a_hang_by_itself(libvirt_domains, tmp_path) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec(panic=True)
    spec = DomainSpec(name=spec.name, uuid=spec.uuid, panic=True,
                      disk=stopping_disk(daemon, spec.name))
    witnesses = _witnesses(tmp_path)

    async def run():
        conn = await _attached(daemon, witnesses)
        try:
            silent_since = witnesses.clock()
            dom = daemon.define(spec)
            domains.append(dom)
            started = time.monotonic()
            dom.create()
            deadline = time.monotonic() + 30
            while witnesses.status(spec.uuid).last_event is None:
                assert time.monotonic() < deadline, "no CRASHED event within 30 s"
                await asyncio.sleep(0.05)
            seen = time.monotonic() - started
            verdict = await witnesses.judge(spec.uuid, None, silent_since)
            return seen, verdict
        finally:
            witnesses.detach(conn, libvirt)
            conn.close()
            witnesses.close()

    seen, verdict = asyncio.run(run())
    assert verdict.by == "panic" and verdict.detail == "panicked", verdict
    assert witnesses.status(spec.uuid).last_event == "panic: panicked"
    assert witnesses.counters["event:panic"] == 1
    print(f"\n[witness] domain start -> pvpanic CRASHED event recorded in {seen:.2f}s")


@pytest.mark.slow
def test_stopped_vcpus_confirm_a_hang_through_bulk_stats(libvirt_domains, tmp_path) -> None:
    daemon, domains = libvirt_domains
    spec = new_spec(agent_channel=False)
    spec = DomainSpec(name=spec.name, uuid=spec.uuid, agent_channel=False,
                      disk=stopping_disk(daemon, spec.name))
    witnesses = _witnesses(tmp_path, progress_interval=1.0, vcpu_stall=2.0)

    async def run():
        dom = daemon.start_domain(spec)
        domains.append(dom)
        await asyncio.sleep(3.0)  # SeaBIOS boots the sector and the vCPU stops
        silent_since = witnesses.clock()
        verdicts = []
        for _ in range(8):
            await witnesses.read_progress(daemon.conn)
            verdicts.append(await witnesses.judge(spec.uuid, dom, silent_since))
            if verdicts[-1].__class__.__name__ == "Hung":
                break
            await asyncio.sleep(1.0)
        witnesses.close()
        return verdicts

    verdicts = asyncio.run(run())
    assert witnesses.stats_available is True
    last = verdicts[-1]
    assert getattr(last, "by", None) == "progress", verdicts
    # Before the stall was long enough, no witness could tell (no qemu-ga channel either).
    assert isinstance(verdicts[0], Unknown) and "no qemu-guest-agent channel" in verdicts[0].why
    print(f"\n[witness] stopped vCPU confirmed after {len(verdicts)} bulk reads 1 s apart: "
          f"{last.describe()}")


def test_witnesses_keep_evidence_off_the_loop_and_name_it_in_status(libvirt_domains,
                                                                    tmp_path) -> None:
    daemon, domains = libvirt_domains
    log = os.path.join(daemon.socket_dir("ev"), "console.log")
    spec = new_spec(video=True, console_log=log)
    dom = daemon.start_domain(spec)
    domains.append(dom)
    witnesses = _witnesses(tmp_path, evidence_max_per_instance=1, evidence_console_lines=5)

    async def run():
        stop = asyncio.Event()
        lag = asyncio.create_task(_loop_lag(stop))
        first = await witnesses.keep_evidence(daemon.conn, dom, spec.uuid)
        await asyncio.sleep(0.01)  # a new directory name (millisecond resolution)
        second = await witnesses.keep_evidence(daemon.conn, dom, spec.uuid)
        stop.set()
        return first, second, await lag

    try:
        first, second, lag = asyncio.run(run())
    finally:
        witnesses.close()
    assert second.path is not None and SCREEN in second.files
    assert witnesses.status(spec.uuid).evidence == second.path
    assert witnesses.store.list(spec.uuid) == [second.path]  # max 1 per instance
    assert not os.path.exists(first.path)
    assert witnesses.counters["evidence_saved"] == 2
    assert lag < 0.5, f"the loop was blocked {lag:.2f}s"


def test_a_libvirt_without_vcpu_stats_or_agent_degrades_to_unknown(tmp_path) -> None:
    """libvirt's test driver: bulk stats without vCPU, block or net fields, no qemu-ga."""
    from host_relay.witness_libvirt import register_quiet_errors
    register_quiet_errors()
    conn = libvirt.open("test:///default")
    try:
        (dom,) = [d for d in conn.listAllDomains() if d.isActive()][:1]
        witnesses = _witnesses(tmp_path)

        async def run():
            await witnesses.read_progress(conn)
            return await witnesses.judge(dom.UUIDString(), dom, witnesses.clock() - 5.0)

        try:
            verdict = asyncio.run(run())
        finally:
            witnesses.close()
    finally:
        conn.close()
    assert witnesses.stats_available is True
    assert verdict == Unknown("no qemu-guest-agent channel; bulk stats without vCPU time")
