"""The relay's decisions on real guests: one record per failure, none for a healthy guest.

Three Debian 12 guests (systemd, udev, qemu-guest-agent and the iim-agent .deb
built from this tree, see vm_guest.py) boot at once under the private
libvirtd, defined as Nova defines an instance with ``hw_qemu_guest_agent=yes``
and no iim channel.  One ``iim-relay run`` with the packaged defaults
([detector], [witnesses]) hot-plugs their channels and posts to a real
masakari-api through a proxy that counts POSTs (Masakari's own 409 would
hide a repeated notification).  Each guest's iim-agent watches
``iim-demo-app`` with 1 s heartbeats.

- ``app``: the watched service killed -> exactly one POST;
- ``panic``: ``echo c > /proc/sysrq-trigger`` (no pvpanic) -> exactly one
  POST, qemu-ga's unanswered guest-ping deciding, within the configured bound,
  with the evidence kept;
- ``life``: iim-agent killed -9 and restarted by systemd, ``systemctl restart
  iim-agent``, ``iim-agent pause`` then the service killed, ``virsh suspend``
  for 60 s, the relay restarted, iim-agent killed -9 and kept from restarting
  (qemu-ga answers: "agent lost"), a clean ``poweroff`` -> no POST at all.

The tests run in this order on one module-wide stage (the guests take a
minute or two to boot under TCG).  Figures are printed; run with ``-s``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid as uuidlib

import libvirt
import pytest

from host_relay.witness_libvirt import bulk_progress
from tests.host_relay.libvirt_fixture import LibvirtDaemon
from tests.host_relay.relay_testing import CountingProxy
from tests.host_relay.test_libvirt_relay import RelayProcess
from tests.host_relay.test_libvirt_vm import agent_deb, vm_base  # noqa: F401 (fixtures)
from tests.host_relay.vm_guest import (
    BOOT_TIMEOUT,
    DEMO_CMDLINE,
    console_text,
    guest_run,
    guest_spawn,
    nova_domain_xml,
    pings,
    prepare,
    wait_console,
    wait_until,
)

pytestmark = [pytest.mark.vm, pytest.mark.libvirt]

ARM_TIMEOUT = 240.0  # the hot-plug, udev starting iim-agent, its hello: after qemu-ga answers
SETTLE = 12.0  # past [detector] min_uptime (10 s) since the hello, so silence counts
DELIVERY_TIMEOUT = 30.0
# [witnesses] defaults: confirmed_hang_after 2.5 s, then a 2 s guest-ping; the last heartbeat
# is at most one 1 s interval before the panic, so the hang is confirmed within 4.5 s of it.
CONFIRM_BOUND = 2.5 + 2.0
DELIVERY_SLACK = 1.5  # evidence (screenshot, console tail), the commit, the POST, under load
VCPU_STALL = 10.0  # the [witnesses] vcpu_stall default a healthy guest must never reach


@dataclasses.dataclass
class Guest:
    role: str
    uuid: str
    dom: libvirt.virDomain
    vmdir: str


@dataclasses.dataclass
class Stage:
    daemon: LibvirtDaemon
    relay: RelayProcess
    proxy: CountingProxy
    guests: dict[str, Guest]
    armed_at: dict[str, float]

    def posts(self, g: Guest) -> int:
        return self.proxy.posts.get(g.uuid, 0)

    def detector(self, g: Guest) -> dict:
        return (self.relay.instance(g.uuid) or {}).get("detector") or {}

    def wait(self, what: str, predicate, timeout: float, g: Guest | None = None,
             step: float = 0.2):
        def detail() -> str:
            console = f"\nconsole:\n{console_text(g.vmdir)}" if g is not None else ""
            return f"{console}\nrelay log:\n{self.relay.log()[-6000:]}"
        return wait_until(what, predicate, timeout, step, detail)

    def armed(self, g: Guest) -> bool:
        return self.detector(g).get("state") == "armed"

    def delivered(self, g: Guest) -> float | None:
        """time.time() at which the first POST for ``g`` that got a 202 arrived."""
        for inst, status, arrived, answered in list(self.proxy.answers):
            if inst == g.uuid and status == 202 and answered:
                return arrived
        return None

    def settle(self, g: Guest) -> None:
        wait = self.armed_at[g.role] + SETTLE - time.monotonic()
        if wait > 0:
            time.sleep(wait)


@pytest.fixture(scope="module")
def stage(libvirtd, vm_base, agent_deb, masakari_server, tmp_path_factory):  # noqa: F811
    daemon = libvirtd
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # raised, not printed
    masakari_server.start()
    host = f"compute-{uuidlib.uuid4().hex[:8]}"
    masakari_server.create_host(host)
    proxy = CountingProxy(masakari_server.url)
    relay = RelayProcess(daemon, tmp_path_factory.mktemp("relay"), host=host,
                         endpoint=proxy.url)
    qga_dir = daemon.socket_dir("qga")
    guests: dict[str, Guest] = {}
    try:
        relay.start()
        booted = time.monotonic()
        for role in ("app", "panic", "life"):
            uuid = str(uuidlib.uuid4())
            vmdir = prepare(daemon, vm_base, agent_deb, demo=True)
            sock = os.path.join(qga_dir, f"{role}.sock")
            dom = daemon.conn.defineXML(nova_domain_xml(f"instance-{uuid[:8]}", uuid, vmdir,
                                                        sock, DEMO_CMDLINE))
            guests[role] = Guest(role, uuid, dom, vmdir)
            dom.create()
        st = Stage(daemon, relay, proxy, guests, {})
        for g in guests.values():
            st.wait(f"{g.role}: qemu-ga answers", lambda g=g: pings(g.dom),
                    BOOT_TIMEOUT, g, step=1.0)
        qga = time.monotonic() - booted
        for g in guests.values():
            st.wait(f"{g.role}: armed", lambda g=g: st.armed(g), ARM_TIMEOUT, g, step=0.5)
            st.armed_at[g.role] = time.monotonic()
        print(f"\n[vm relay] 3 guests booted at once: qemu-ga answering after {qga:.1f} s, "
              f"all armed (hot-plugged, hello) after {time.monotonic() - booted:.1f} s")
        yield st
    finally:
        for g in guests.values():
            daemon.remove(g.dom)
        relay.stop()
        proxy.close()


@pytest.mark.timeout(900)  # the first test also boots the guests (the module's stage)
def test_a_killed_service_is_exactly_one_record(stage: Stage) -> None:
    g = stage.guests["app"]
    stage.settle(g)
    assert stage.posts(g) == 0
    code, out = guest_run(g.dom, "systemctl is-active iim-demo-app")
    assert code == 0, out
    killed = time.time()
    code, out = guest_run(g.dom, "systemctl kill -s KILL iim-demo-app")
    assert code == 0, out
    arrived = stage.wait("a 202 for the killed service", lambda: stage.delivered(g),
                         DELIVERY_TIMEOUT, g)
    time.sleep(15.0)  # a repeat would come now, if ever: heartbeats keep saying "failed"
    entry = stage.relay.instance(g.uuid)
    assert stage.posts(g) == 1, stage.proxy.posts
    assert entry["last_failure"]["kind"] == "process_failure", entry["last_failure"]
    assert "demo" in entry["last_failure"]["reason"], entry["last_failure"]
    print(f"\n[vm relay] service killed -> 202 in {arrived - killed:.2f} s (the check's 3 s "
          f"grace included); POSTs {stage.posts(g)}; reason: {entry['last_failure']['reason']}")


@pytest.mark.timeout(300)
def test_a_kernel_panic_is_exactly_one_record_within_the_bound(stage: Stage) -> None:
    g = stage.guests["panic"]
    stage.settle(g)
    assert stage.posts(g) == 0
    guest_spawn(g.dom, "sleep 0.5; echo c > /proc/sysrq-trigger")
    panicked = wait_console(g.vmdir, "Kernel panic", 60.0)
    assert panicked is not None, f"no panic; console:\n{console_text(g.vmdir)}"
    assert g.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING  # no pvpanic: libvirt sees nothing
    arrived = stage.wait("a 202 for the panicked guest", lambda: stage.delivered(g),
                         DELIVERY_TIMEOUT, g)
    took = arrived - panicked
    time.sleep(15.0)
    entry = stage.relay.instance(g.uuid)
    reason = entry["last_failure"]["reason"]
    assert stage.posts(g) == 1, stage.proxy.posts
    assert entry["last_failure"]["kind"] == "guest_hang", entry["last_failure"]
    assert entry["detector"]["witness"] == "guest_agent", entry["detector"]
    assert "hang confirmed by guest_agent" in reason, reason
    evidence = (entry.get("witnesses") or {}).get("evidence")
    assert evidence and "screen.png" in os.listdir(evidence), entry.get("witnesses")
    with open(os.path.join(evidence, "console.log"), "rb") as f:
        assert b"Kernel panic" in f.read()
    print(f"\n[vm relay] kernel panic (console line) -> 202 in {took:.2f} s (bound: "
          f"{CONFIRM_BOUND:g} s after the last heartbeat, goal 5 s); POSTs {stage.posts(g)}; "
          f"reason: {reason}; evidence {sorted(os.listdir(evidence))}")
    assert took < CONFIRM_BOUND + DELIVERY_SLACK, (took, stage.relay.log()[-4000:])


class Watch:
    """Polls the ``life`` guest through a step: POSTs, detector states, vCPU standstill."""

    def __init__(self, stage: Stage, g: Guest) -> None:
        self.stage, self.g = stage, g
        self.rows: list[tuple[str, float, str]] = []
        self.longest_still = 0.0
        self.vcpu_reads = 0

    def quiet(self, label: str, seconds: float, vcpu: bool = True) -> set[str]:
        """Poll for ``seconds``: no POST for the guest at any point; the states seen."""
        states: list[str] = []
        last_ns, still_since = None, time.monotonic()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.stage.posts(self.g) == 0, (label, self.stage.proxy.posts,
                                                   self.stage.relay.log()[-6000:])
            state = self.stage.detector(self.g).get("state") or "-"
            if not states or states[-1] != state:
                states.append(state)
            if vcpu:
                sample = (bulk_progress(self.stage.daemon.conn) or {}).get(self.g.uuid)
                if sample is not None:
                    self.vcpu_reads += 1
                    if sample.vcpu_ns != last_ns:
                        last_ns, still_since = sample.vcpu_ns, time.monotonic()
                    self.longest_still = max(self.longest_still,
                                             time.monotonic() - still_since)
            time.sleep(0.5)
        assert self.stage.posts(self.g) == 0, (label, self.stage.relay.log()[-6000:])
        self.rows.append((label, seconds, " -> ".join(states)))
        return set(states)

    def armed_again(self, label: str, timeout: float = 90.0) -> None:
        self.stage.wait(f"{label}: armed again", lambda: self.stage.armed(self.g), timeout,
                        self.g, step=0.5)


def relay_status_cli(stage: Stage, uuid: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "host_relay.cli", "status", uuid,
                           "--config-file", str(stage.relay.conf)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(1500)
def test_a_healthy_guest_is_never_recorded(stage: Stage) -> None:
    g = stage.guests["life"]
    others = [o for o in stage.guests.values() if o is not g]
    w = Watch(stage, g)
    stage.settle(g)

    def sh(script: str) -> str:
        code, out = guest_run(g.dom, script)
        assert code == 0, (script, out)
        return out

    # 1. iim-agent killed with -9: systemd restarts it 2 s later (RestartSec=2s).
    start_id = stage.detector(g).get("start_id")
    sh("systemctl kill -s KILL iim-agent.service")
    seen = w.quiet("iim-agent killed -9, restarted by systemd", 20.0)
    w.armed_again("restarted agent")
    assert stage.detector(g).get("start_id") != start_id, "the agent did not start again"

    # 2. A clean restart: goodbye, then hello.
    sh("systemctl restart iim-agent.service")
    w.quiet("systemctl restart iim-agent", 15.0)
    w.armed_again("clean restart")

    # 3. The guest's own maintenance pause, then the watched service killed.
    sh("iim-agent pause --for 5m --reason vm-test && systemctl kill -s KILL iim-demo-app")
    seen = w.quiet("iim-agent pause, then the service killed", 20.0)
    assert "paused" in seen, seen
    sh("systemctl start iim-demo-app")
    stage.wait("the check is ok again",
               lambda: (stage.detector(g).get("checks") or {}).get("demo") == "ok", 30.0, g)
    sh("iim-agent resume")
    w.quiet("iim-agent resume, the service running again", 15.0)
    w.armed_again("resumed")

    # 4. virsh suspend for 60 s, then resume: the domain is paused, not hung.
    g.dom.suspend()
    w.quiet("virsh suspend (60 s)", 60.0, vcpu=False)
    g.dom.resume()
    w.quiet("virsh resume", 20.0)
    w.armed_again("after resume")

    # 5. The relay restarted while the guest runs: nobody is posted again.
    before = {o.role: stage.posts(o) for o in others}
    stage.relay.stop()
    stage.relay.start()
    w.armed_again("after the relay restarted", 60.0)
    w.quiet("the relay restarted", 15.0)
    assert {o.role: stage.posts(o) for o in others} == before, stage.proxy.posts

    # 6. iim-agent killed with -9 and kept from restarting, while qemu-ga answers.
    killed = time.monotonic()
    sh("systemctl mask --runtime iim-agent.service && systemctl kill -s KILL iim-agent.service")
    stage.wait("agent lost", lambda: stage.detector(g).get("state") == "agent_lost", 30.0, g)
    decided = time.monotonic() - killed
    seen = w.quiet("iim-agent killed -9 and masked (qemu-ga answers)", 30.0)
    det = stage.detector(g)
    assert seen == {"agent_lost"}, seen
    assert det["witness"] == "guest_agent", det
    cli = relay_status_cli(stage, g.uuid)
    assert "agent lost" in cli, cli
    log = stage.relay.log()
    assert "agent lost" in log.lower(), log[-4000:]
    sh("systemctl unmask --runtime iim-agent.service && systemctl start iim-agent.service")
    w.armed_again("agent unmasked")
    w.quiet("iim-agent started again", 10.0)

    # 7. A clean poweroff: goodbye, then the domain stops.
    guest_spawn(g.dom, "systemctl poweroff")
    stage.wait("powered off", lambda: not g.dom.isActive(), 120.0, g, step=0.5)
    w.quiet("clean poweroff", 15.0, vcpu=False)

    assert w.vcpu_reads > 100, w.vcpu_reads
    width = max(len(label) for label, _, _ in w.rows)
    print("\n[vm relay] a healthy guest, 0 POSTs at every step:")
    for label, seconds, states in w.rows:
        print(f"  {label:<{width}}  {seconds:4.0f} s  states: {states}")
    print(f"[vm relay] agent killed and masked: 'agent lost' decided by qemu-ga "
          f"{decided:.1f} s after the kill; relay status says: "
          f"{next(line.strip() for line in cli.splitlines() if 'agent lost' in line)}")
    print(f"[vm relay] running guest: longest vCPU standstill {w.longest_still:.1f} s over "
          f"{w.vcpu_reads} reads (vcpu_stall default {VCPU_STALL:g} s)")
    # The progress witness confirms a hang after vcpu_stall of standstill: a healthy
    # guest must stay well clear of it, or it would be restarted.
    assert w.longest_still < VCPU_STALL / 2, w.longest_still
