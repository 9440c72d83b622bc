"""The witnesses' sans-I/O core: events, ping readings and bulk stats to verdicts."""

from __future__ import annotations

import pytest

from host_relay.witness_libvirt import (
    ERR_AGENT_UNRESPONSIVE,
    ERR_ARGUMENT_UNSUPPORTED,
    agent_channel_state,
    classify_ping_error,
    console_log_path,
)
from host_relay.witnesses import (
    Alive,
    Hung,
    PingOutcome,
    PingReading,
    ProgressSample,
    ProgressTracker,
    Unknown,
    combine,
    event_evidence,
    ping_verdict,
)

U = "6313bbe7-7a7b-47fe-b709-cf6b18141be7"


def test_crashed_lifecycle_event_is_panic_evidence_and_others_are_none():
    ev = event_evidence("lifecycle", 5.0, event=8, detail=0)
    assert ev is not None and ev.verdict() == Hung("panic", "panicked")
    assert event_evidence("lifecycle", 5.0, event=5, detail=1) is None  # STOPPED
    assert event_evidence("watchdog", 1.0, action=2).verdict() == Hung("watchdog", "action reset")
    io = event_evidence("io_error", 1.0, action=1, reason="enospc", device="vda")
    assert io.verdict() == Hung("io_error", "vda: enospc, action pause")
    with pytest.raises(ValueError):
        event_evidence("reboot", 1.0)


@pytest.mark.parametrize(("outcome", "verdict"), [
    (PingOutcome.ANSWERED, Alive),
    (PingOutcome.TIMED_OUT, Hung),
    (PingOutcome.NOT_CONNECTED, Unknown),
    (PingOutcome.NO_CHANNEL, Unknown),
    (PingOutcome.ERROR, Unknown),
])
def test_ping_outcomes(outcome, verdict):
    got = ping_verdict(PingReading(outcome, 0.5, "x"))
    assert isinstance(got, verdict)
    if not isinstance(got, Unknown):
        assert got.by == "guest_agent"


def test_libvirt_ping_errors_are_classified_by_code_message_and_time():
    # Messages as libvirt 9.0 gives them (measured against the private libvirtd).
    assert classify_ping_error(
        ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: QEMU guest agent is not "
        "connected", 0.0003, 2).outcome is PingOutcome.NOT_CONNECTED
    assert classify_ping_error(
        ERR_ARGUMENT_UNSUPPORTED, "argument unsupported: QEMU guest agent is not configured",
        0.0001, 2).outcome is PingOutcome.NO_CHANNEL
    assert classify_ping_error(ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding",
                               2.01, 2).outcome is PingOutcome.TIMED_OUT
    # The same code returned at once is not an unanswered ping.
    assert classify_ping_error(ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding",
                               0.01, 2).outcome is PingOutcome.ERROR
    assert classify_ping_error(42, "Domain not found", 0.01, 2).outcome is PingOutcome.ERROR


XML = """<domain><devices>
<channel type='unix'><source mode='bind' path='/x/a.sock'/>
  <target type='virtio' name='org.qemu.guest_agent.0' state='{state}'/></channel>
<serial type='file'><source path='/var/lib/nova/instances/u/console.log'/></serial>
</devices></domain>"""


def test_domain_xml_names_the_agent_channel_state_and_the_console_log():
    assert agent_channel_state(XML.format(state="connected")) == "connected"
    assert agent_channel_state(XML.format(state="disconnected")) == "disconnected"
    assert agent_channel_state("<domain><devices/></domain>") is None
    assert console_log_path(XML) == "/var/lib/nova/instances/u/console.log"
    pty = ("<domain><devices><serial type='pty'><log file='/l/console.log' append='off'/>"
           "</serial></devices></domain>")
    assert console_log_path(pty) == "/l/console.log"
    assert console_log_path("<domain><devices><serial type='pty'/></devices></domain>") is None


def stats(vcpu: int, rd: int = 0, rx: int = 0) -> dict:
    return {"vcpu.current": 1, "vcpu.0.time": vcpu, "block.count": 1, "block.0.rd.reqs": rd,
            "block.0.wr.reqs": 0, "net.count": 1, "net.0.rx.pkts": rx, "net.0.tx.pkts": 0}


def test_progress_sample_sums_counters_and_says_none_when_absent():
    s = ProgressSample.from_stats({**stats(10, rd=3, rx=4), "vcpu.current": 2,
                                   "vcpu.1.time": 5})
    assert s == ProgressSample(vcpu_ns=15, block_ops=3, net_packets=4)
    assert ProgressSample.from_stats({}) == ProgressSample(None, None, None)
    # Measured: a domain without disks or NICs reports block.count 0, net.count 0.
    assert ProgressSample.from_stats({"block.count": 0, "net.count": 0}).block_ops == 0


def test_progress_frozen_vcpus_confirm_a_hang_moving_ones_do_not():
    t = ProgressTracker(vcpu_stall=10.0)
    t.feed({U: ProgressSample.from_stats(stats(100))}, 0.0)
    assert t.verdict(U, 0.0, 0.0) == Unknown("no bulk stats since the silence began")
    for now in (5.0, 10.0, 15.0):
        t.feed({U: ProgressSample.from_stats(stats(100))}, now)
    assert t.verdict(U, silent_since=1.0, now=15.0) == Hung("progress",
                                                            "vCPUs used no time for 15.0s")
    t2 = ProgressTracker(vcpu_stall=10.0)
    for i, now in enumerate((0.0, 5.0, 10.0, 15.0)):
        t2.feed({U: ProgressSample.from_stats(stats(100 + i, rd=i))}, now)
    v = t2.verdict(U, silent_since=1.0, now=15.0)
    assert v == Unknown("the guest still does disk or network I/O")
    assert t2.io_since(U, 1.0) is True
    t2.feed({}, 20.0)  # the domain is gone
    assert t2.verdict(U, 1.0, 20.0) == Unknown("no bulk stats for this domain")


def test_io_from_before_the_silence_is_not_a_sign_of_life():
    # Measured on a Debian guest: readings 5 s apart, the last write (journald) a moment
    # before the kernel panicked, the guest-ping timing out 4.5 s into the silence.  The
    # reading after the panic spans it: its moved counters say nothing of after.
    t = ProgressTracker(vcpu_stall=10.0)
    t.feed({U: ProgressSample.from_stats(stats(100, rd=1))}, 0.0)
    t.feed({U: ProgressSample.from_stats(stats(200, rd=2))}, 5.0)  # I/O somewhere in 0-5
    assert t.io_since(U, 3.0) is False
    timed_out = PingReading(PingOutcome.TIMED_OUT, 2.0, "guest agent timeout")
    verdict = combine(event=None, ping=timed_out, progress=t.verdict(U, 3.0, 7.5),
                      io_moved=t.io_since(U, 3.0), silent_since=3.0)
    assert isinstance(verdict, Hung) and verdict.by == "guest_agent", verdict
    # I/O between two readings both after the silence began is the guest's own.
    t.feed({U: ProgressSample.from_stats(stats(300, rd=3))}, 10.0)
    assert t.io_since(U, 3.0) is True
    assert t.io_since(U, 6.0) is False  # moved somewhere in 5-10: maybe before 6


def test_combine_orders_witnesses_and_names_the_one_that_decided():
    answered = PingReading(PingOutcome.ANSWERED, 0.1)
    timed_out = PingReading(PingOutcome.TIMED_OUT, 2.0)
    panic = event_evidence("lifecycle", 9.0, event=8, detail=0)
    vague = Unknown("vCPUs run; progress alone cannot tell")
    # A panic after the silence began decides, whatever else says.
    assert combine(event=panic, ping=answered, progress=vague, io_moved=None,
                   silent_since=8.0).by == "panic"
    # One from before the silence (an old crash, since recovered) does not.
    assert combine(event=panic, ping=answered, progress=vague, io_moved=None,
                   silent_since=10.0) == Alive("guest_agent", "guest-ping answered in 0.10s")
    assert combine(event=None, ping=timed_out, progress=vague, io_moved=False,
                   silent_since=0.0).by == "guest_agent"
    held = combine(event=None, ping=timed_out, progress=vague, io_moved=True, silent_since=0.0)
    assert isinstance(held, Unknown) and "does I/O" in held.why
    frozen = Hung("progress", "vCPUs used no time for 12.0s")
    assert combine(event=None, ping=None, progress=frozen, io_moved=None,
                   silent_since=0.0) == frozen
    none = combine(event=None, ping=PingReading(PingOutcome.NO_CHANNEL, 0.0), progress=vague,
                   io_moved=None, silent_since=0.0)
    assert none == Unknown("no qemu-guest-agent channel; vCPUs run; progress alone cannot tell")
