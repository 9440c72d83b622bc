"""The witnesses wired into a running relay, against the real private libvirtd + QEMU (TCG).

``iim-relay run`` (a subprocess, as in test_libvirt_relay.py) reads a
"guest" that is a boot sector (serial_guest.py): it plays an agent's hello
and heartbeats to serial port 1, then stops its vCPU (``cli; hlt``) after
telling pvpanic it panicked - a domain with a pvpanic device gets libvirt's
CRASHED event, one without keeps running with a vCPU that uses no time.
It has no qemu-ga channel: a domain with one gets the iim channel
hot-plugged, which a boot sector cannot open, so the serial fallback carries
the frames, and the qemu-ga witness says "unknown" (the answered and the
unanswered ping need a real guest: test_libvirt_vm_witnesses.py).
Notifications are queued in the outbox (Masakari is not reachable here);
status and the log say which witness decided.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.host_relay.libvirt_fixture import DomainSpec
from tests.host_relay.serial_guest import agent_stream, boot_image
from tests.host_relay.test_libvirt_relay import (  # noqa: F401 - relays is a fixture
    RelayProcess,
    connected,
    new_spec,
    wait_for,
)

pytestmark = pytest.mark.libvirt

INTERVAL = 0.5  # the guest's heartbeat interval
MISSED = 20  # [detector] missed_heartbeats here: the rule says hung after 10 s of silence
RULE = MISSED * INTERVAL
HALT_AT = 0x41  # serial_guest.BOOT_CODE: "halt: hlt; jmp halt", then the DAP (16 bytes)
TAIL_AT = 0x54  # after the DAP: free space in the boot sector
# jmp near +0x10 (to TAIL_AT); tail: mov dx,0x505; mov al,1; out dx,al (pvpanic: panicked);
# cli; hlt (the vCPU never runs again).
JMP_TAIL = bytes.fromhex("e91000")
PANIC_AND_STOP = bytes.fromhex("ba0505b001eefaf4")


def silent_guest(daemon, name: str, heartbeats: int) -> str:
    image = bytearray(boot_image(agent_stream(count=heartbeats, interval=INTERVAL)))
    assert image[HALT_AT:HALT_AT + 3] == bytes.fromhex("f4ebfd")
    assert image[TAIL_AT:TAIL_AT + len(PANIC_AND_STOP)] == bytes(len(PANIC_AND_STOP))
    image[HALT_AT:HALT_AT + 3] = JMP_TAIL
    image[TAIL_AT:TAIL_AT + len(PANIC_AND_STOP)] = PANIC_AND_STOP
    return daemon.own_file(os.path.join(daemon.base, f"{name}.img"), bytes(image))


def guest_spec(daemon, *, panic: bool, heartbeats: int = 16) -> DomainSpec:
    base = new_spec()
    return DomainSpec(name=base.name, uuid=base.uuid, agent_channel=False, serial_ports=2,
                      panic=panic, video=True,
                      disk=silent_guest(daemon, base.name, heartbeats))


def witness_relay(daemon, tmp_path, **witnesses: str) -> RelayProcess:
    relay = RelayProcess(daemon, tmp_path, serial_fallback="true", serial_port="1")
    opts = {"progress_interval": "1", "vcpu_stall": "2", **witnesses}
    with open(relay.conf, "a") as conf:
        conf.write(f"[detector]\nmin_uptime = 0\nmissed_heartbeats = {MISSED}\n[witnesses]\n"
                   + "".join(f"{k} = {v}\n" for k, v in opts.items()))
    return relay


def spoke(entry: dict) -> bool:
    return connected(entry) and (entry["detector"].get("last_seq") or 0) >= 2


def queued_hang(entry: dict) -> bool:
    return bool(entry.get("last_failure")) and entry["last_failure"]["kind"] == "guest_hang"


def silence_of(reason: str) -> float:
    m = re.search(r"no heartbeat for ([0-9.]+)s", reason)
    assert m, reason
    return float(m.group(1))


@pytest.mark.slow
def test_a_silent_guest_without_qemu_ga_is_confirmed_by_its_stopped_vcpu(
        libvirt_domains, tmp_path) -> None:
    daemon, domains = libvirt_domains
    spec = guest_spec(daemon, panic=False)
    relay = witness_relay(daemon, tmp_path).start()
    try:
        domains.append(daemon.start_domain(spec))
        relay.wait_instance(spec.uuid, spoke, "heartbeats over the serial port")
        entry = relay.wait_instance(spec.uuid, queued_hang, "a hang notification")
    finally:
        log = relay.stop()
    reason = entry["last_failure"]["reason"]
    assert "hang confirmed by progress" in reason, reason
    silent = silence_of(reason)
    # Asked after confirmed_hang_after (2.5 s): no qemu-ga (unknown), but the vCPU has
    # used no time for vcpu_stall (2 s): confirmed well before the rule (10 s).
    assert 2.5 <= silent < RULE, reason
    assert entry["detector"]["witness"] == "progress", entry["detector"]
    assert "hang confirmed by progress" in log
    assert "evidence of the hang kept in" in log, log
    evidence = entry["witnesses"]["evidence"]
    assert evidence and os.path.isdir(evidence) and "screen.png" in os.listdir(evidence)
    print(f"\n[witness relay] stopped vCPU: notified after {silent:.1f}s of silence "
          f"(rule: {RULE:g}s); {reason}")


@pytest.mark.slow
def test_a_pvpanic_crash_is_notified_at_once(libvirt_domains, tmp_path) -> None:
    daemon, domains = libvirt_domains
    spec = guest_spec(daemon, panic=True)
    relay = witness_relay(daemon, tmp_path).start()
    try:
        domains.append(daemon.start_domain(spec))
        relay.wait_instance(spec.uuid, spoke, "heartbeats over the serial port")
        entry = relay.wait_instance(spec.uuid, queued_hang, "a hang notification")
    finally:
        log = relay.stop()
    reason = entry["last_failure"]["reason"]
    assert "hang confirmed by panic: panicked" in reason, reason
    silent = silence_of(reason)
    assert silent < 2.5, reason  # the event decides, not the silence
    assert "libvirt reports panic" in log
    assert len([line for line in log.splitlines() if "is in the outbox as entry" in line]) == 1
    print(f"\n[witness relay] pvpanic: notified {silent:.2f}s after the last heartbeat; "
          f"{reason}")


@pytest.mark.slow
def test_the_guard_holds_hangs_of_many_silent_guests_until_their_own_witness(
        libvirt_domains, tmp_path) -> None:
    daemon, domains = libvirt_domains
    specs = [guest_spec(daemon, panic=False, heartbeats=12) for _ in range(3)]
    # The rule (10 s) comes before the vCPU witness (stall of 14 s): the rule's hangs are
    # held while the guard is engaged, then each is released by its own witness.
    relay = witness_relay(daemon, tmp_path, vcpu_stall="14", guard_min_instances="2",
                          guard_min_percent="50", guard_window="30").start()
    held_seen = []
    try:
        for spec in specs:
            domains.append(daemon.start_domain(spec))
        for spec in specs:
            relay.wait_instance(spec.uuid, spoke, "heartbeats over the serial port")

        def all_queued() -> bool:
            status = relay.status()
            if (status.get("silence_guard") or {}).get("held"):
                held_seen.append(status["silence_guard"])
            return all(queued_hang(status["instances"].get(s.uuid) or {}) for s in specs)

        wait_for(all_queued, 60.0, lambda: f"not all notified:\n{relay.log()}")
        status = relay.status()
    finally:
        log = relay.stop()
    assert "Host-wide silence:" in log, log
    assert held_seen and held_seen[0]["engaged"], "no hang was seen held"
    for spec in specs:
        reason = status["instances"][spec.uuid]["last_failure"]["reason"]
        assert "hang confirmed by progress" in reason, reason
        assert silence_of(reason) >= RULE, reason  # after the rule's deadline: it was held
    held_lines = [line for line in log.splitlines() if "held by the host-wide silence" in line]
    assert held_lines, log
    print(f"\n[witness relay] guard: {json.dumps(held_seen[0])}; "
          f"{len(held_lines)} hang(s) held, all released by their own witness")
