"""The witnesses on a real guest: Debian 12 with systemd, udev and qemu-guest-agent.

The guest is the cached image of devtools/vm_image.py booted with its own
systemd (no ``init=``) under the private libvirtd, defined as Nova defines an
instance of an image with ``hw_qemu_guest_agent=yes``: an
org.qemu.guest_agent.0 channel, a VGA device, the serial console written to
console.log, and no iim channel.  udev starts Debian's qemu-guest-agent when
its port appears.  The test drives the guest through qemu-ga itself
(``guest-exec``), so it needs no network and no keyboard:

- guest-ping answers: the Alive witness, and how long a ping takes under TCG;
- ``echo c > /proc/sysrq-trigger`` (no pvpanic: libvirt still says running):
  guest-ping now times out within the bound, off the event loop, and the
  evidence of the panic (screenshot, console tail) is saved.

Figures are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
import uuid as uuidlib

import libvirt
import pytest

from host_relay.evidence import CONSOLE, SCREEN, EvidenceStore, collect
from host_relay.witness_libvirt import WitnessReader, bulk_progress, ping_agent
from host_relay.witnesses import Alive, Hung, PingOutcome, Unknown, ping_verdict
from tests.host_relay.test_libvirt_vm import agent_deb, vm_base  # noqa: F401 (fixtures)
from tests.host_relay.vm_guest import (
    BOOT_TIMEOUT,
    agent_cmd,
    console_text,
    guest_sh,
    guest_spawn,
    nova_domain_xml,
    prepare,
)

pytestmark = [pytest.mark.vm, pytest.mark.libvirt]

PING_TIMEOUT = 2  # the option's default
PINGS = 5
STAT_READS = 12  # bulk stats reads 1 s apart: does an idle guest's vCPU time ever stand still?
LOOP_STEP = 0.01


def longest_vcpu_standstill(conn, uuid: str, reads: int) -> tuple[float, int]:
    """(longest run of seconds with no vCPU time used, vCPU ns used) over ``reads`` 1 s apart."""
    first = last = bulk_progress(conn)[uuid].vcpu_ns
    still_since = time.monotonic()
    longest = 0.0
    for _ in range(reads):
        time.sleep(1.0)
        now_ns = bulk_progress(conn)[uuid].vcpu_ns
        if now_ns != last:
            still_since, last = time.monotonic(), now_ns
        longest = max(longest, time.monotonic() - still_since)
    return longest, last - first


async def _timed_ping_with_loop_lag(reader: WitnessReader, dom) -> tuple:
    stop = asyncio.Event()

    async def lag() -> float:
        worst = 0.0
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(LOOP_STEP)
            worst = max(worst, time.monotonic() - before - LOOP_STEP)
        return worst

    task = asyncio.create_task(lag())
    reading = await reader.ping(dom, PING_TIMEOUT)
    stop.set()
    return reading, await task


@pytest.mark.timeout(900)
def test_qemu_ga_answers_a_running_guest_and_times_out_after_a_kernel_panic(
        libvirtd, vm_base, agent_deb, tmp_path) -> None:  # noqa: F811
    daemon = libvirtd
    uuid = str(uuidlib.uuid4())
    vmdir = prepare(daemon, vm_base, agent_deb)
    agent_socket = os.path.join(daemon.socket_dir("ga"), "qga.sock")
    dom = daemon.conn.defineXML(nova_domain_xml(f"vw-{uuid[:8]}", uuid, vmdir, agent_socket))
    reader = WitnessReader(max_workers=2)
    try:
        dom.create()
        started = time.monotonic()
        first = None
        while time.monotonic() - started < BOOT_TIMEOUT:
            reading = ping_agent(dom, PING_TIMEOUT)
            if reading.outcome is PingOutcome.ANSWERED:
                first = time.monotonic() - started
                break
            time.sleep(1.0)
        assert first is not None, f"qemu-ga never answered; console:\n{console_text(vmdir)}"
        assert "systemd" in guest_sh(dom, "cat /proc/1/comm"), "not booted with systemd"
        answered = [ping_agent(dom, PING_TIMEOUT) for _ in range(PINGS)]
        assert all(r.outcome is PingOutcome.ANSWERED for r in answered), answered
        assert isinstance(ping_verdict(answered[0]), Alive)
        took = [r.took for r in answered]
        print(f"\n[vm-witness] boot to first guest-ping answer {first:.1f}s; guest-ping "
              f"median {statistics.median(took) * 1000:.0f} ms, max {max(took) * 1000:.0f} ms")

        # qemu-ga stopped in a running guest (masakari-monitors reports this as a failure):
        # libvirt sees the port closed, so the witness says "unknown", never "hung".
        # Started, not waited for: qemu-ga stops a second later, and asking it for the
        # command's exit status then would race with its own stop.
        guest_spawn(dom, "systemd-run --no-block sh -c 'sleep 1; systemctl stop "
                         "qemu-guest-agent; sleep 8; systemctl start qemu-guest-agent'")
        deadline = time.monotonic() + 30
        while (stopped := ping_agent(dom, PING_TIMEOUT)).outcome is PingOutcome.ANSWERED:
            assert time.monotonic() < deadline, "qemu-ga kept answering"
            time.sleep(0.2)
        assert stopped.outcome is PingOutcome.NOT_CONNECTED, stopped
        assert isinstance(ping_verdict(stopped), Unknown) and stopped.took < 1.0
        deadline = time.monotonic() + 60
        while ping_agent(dom, PING_TIMEOUT).outcome is not PingOutcome.ANSWERED:
            assert time.monotonic() < deadline, "qemu-ga did not come back"
            time.sleep(0.5)
        print(f"[vm-witness] qemu-ga stopped: {stopped.outcome.value} in "
              f"{stopped.took * 1000:.1f} ms (unknown, not hung); answering again after restart")

        idle_still, idle_used = longest_vcpu_standstill(daemon.conn, uuid, STAT_READS)
        print(f"[vm-witness] idle guest over {STAT_READS}s: vCPU used {idle_used / 1e6:.0f} ms, "
              f"longest standstill {idle_still:.1f}s")

        # The panic, through qemu-ga itself (it returns before the guest dies).
        agent_cmd(dom, "guest-exec", {"path": "/bin/sh",
                                  "arg": ["-c", "sleep 0.5; echo c > /proc/sysrq-trigger"]})
        panicked = time.monotonic() + 0.5
        deadline = time.monotonic() + 60
        while "Kernel panic" not in console_text(vmdir):
            assert time.monotonic() < deadline, f"no panic; console:\n{console_text(vmdir)}"
            time.sleep(0.05)
        seen = time.monotonic()
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING  # no pvpanic: libvirt sees nothing

        reading, lag = asyncio.run(_timed_ping_with_loop_lag(reader, dom))
        confirmed = time.monotonic()
        verdict = ping_verdict(reading)
        assert reading.outcome is PingOutcome.TIMED_OUT, reading
        assert isinstance(verdict, Hung) and verdict.by == "guest_agent"
        assert reading.took <= PING_TIMEOUT + 3.0, reading  # libvirt's own bound, plus slack
        assert lag < 0.5, f"the event loop was blocked {lag:.2f}s"
        again = ping_agent(dom, PING_TIMEOUT)
        print(f"[vm-witness] panic -> console line {seen - panicked:.2f}s; unanswered ping "
              f"took {reading.took:.2f}s ({reading.detail}); panic -> Hung(guest_agent) "
              f"{confirmed - panicked:.2f}s; loop lag {lag * 1000:.1f} ms; next ping "
              f"{again.outcome.value} in {again.took:.2f}s")
        assert again.outcome is PingOutcome.TIMED_OUT, again

        panic_still, panic_used = longest_vcpu_standstill(daemon.conn, uuid, 5)
        print(f"[vm-witness] panicked guest over 5s: vCPU used {panic_used / 1e6:.0f} ms, "
              f"longest standstill {panic_still:.1f}s")

        store = EvidenceStore(str(tmp_path / "evidence"), 2, 64 * 1024 * 1024)
        ev_started = time.monotonic()
        ev = collect(store, daemon.conn, dom, uuid, console_lines=50)
        ev_took = time.monotonic() - ev_started
        assert set(ev.files) == {SCREEN, CONSOLE}, ev
        with open(os.path.join(ev.path, CONSOLE), "rb") as f:
            tail = f.read()
        assert b"Kernel panic" in tail and tail.count(b"\n") <= 50
        shot = os.path.getsize(os.path.join(ev.path, SCREEN))
        print(f"[vm-witness] evidence saved in {ev_took * 1000:.0f} ms: screenshot {shot} bytes, "
              f"console tail {len(tail)} bytes")
    finally:
        reader.close()
        daemon.remove(dom)
        shutil.rmtree(vmdir, ignore_errors=True)
