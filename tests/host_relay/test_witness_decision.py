"""The witnesses' decision for one silent instance: when to ask, and what each verdict means."""

from __future__ import annotations

from host_relay.settings import WitnessSettings
from host_relay.witness_decision import Outcome, SilenceJudge
from host_relay.witnesses import Alive, Hung, Unknown

ALIVE = Alive("guest_agent", "guest-ping answered in 0.01s")


def test_asks_after_confirmed_hang_after_and_at_least_two_intervals():
    j = SilenceJudge(WitnessSettings(confirmed_hang_after=2.5))
    assert not j.ask_due(last_heard=10.0, interval=1.0, now=12.4)
    assert j.ask_due(10.0, 1.0, 12.5)
    assert j.next_ask(10.0, 1.0) == 12.5
    slow = SilenceJudge(WitnessSettings(confirmed_hang_after=2.5))
    assert not slow.ask_due(10.0, 5.0, 19.9)  # two 5 s intervals first
    assert slow.ask_due(10.0, 5.0, 20.0)
    off = SilenceJudge(WitnessSettings(enabled=False))
    assert not off.ask_due(0.0, 1.0, 1000.0)


def test_hung_is_a_confirmed_hang_named_by_its_witness():
    j = SilenceJudge(WitnessSettings())
    assert j.ask_due(0.0, 1.0, 3.0)
    d = j.verdict(Hung("guest_agent", "guest-ping unanswered after 2.00s"), 5.0)
    assert d.outcome is Outcome.CONFIRMED_HANG and d.by == "guest_agent" and d.first
    assert not d.vetoes_hang


def test_alive_is_agent_lost_and_vetoes_the_hang_rule_until_heard_again():
    j = SilenceJudge(WitnessSettings())
    assert j.ask_due(0.0, 1.0, 3.0)
    d = j.verdict(ALIVE, 3.0)
    assert d.outcome is Outcome.AGENT_LOST and d.vetoes_hang and d.first and d.by == "guest_agent"
    assert not j.ask_due(0.0, 1.0, 4.0)  # asked again after the ping timeout (2 s)
    assert j.ask_due(0.0, 1.0, 5.0)
    again = j.verdict(ALIVE, 5.0)
    assert again.outcome is Outcome.AGENT_LOST and not again.first  # WARNING once
    assert j.agent_lost_for(5.0) == 5.0
    # qemu-ga stops answering too: now it is a hang.
    assert j.verdict(Hung("guest_agent", "unanswered"), 7.0).outcome is Outcome.CONFIRMED_HANG
    j.heard()
    assert j.last is None and j.agent_lost_for(8.0) is None


def test_agent_lost_notifies_only_when_asked_and_only_once_after_the_timeout():
    quiet = SilenceJudge(WitnessSettings(agent_lost_timeout=60.0))
    quiet.ask_due(0.0, 1.0, 3.0)
    assert quiet.verdict(ALIVE, 3.0).outcome is Outcome.AGENT_LOST
    assert quiet.verdict(ALIVE, 100.0).outcome is Outcome.AGENT_LOST  # never notifies
    j = SilenceJudge(WitnessSettings(agent_lost_timeout=60.0, notify_on_agent_lost=True))
    j.ask_due(0.0, 1.0, 3.0)
    assert j.verdict(ALIVE, 3.0).outcome is Outcome.AGENT_LOST
    assert j.verdict(ALIVE, 59.0).outcome is Outcome.AGENT_LOST
    assert j.verdict(ALIVE, 60.0).outcome is Outcome.AGENT_LOST_NOTIFY
    assert j.verdict(ALIVE, 62.0).outcome is Outcome.AGENT_LOST


def test_unknown_leaves_todays_rule():
    j = SilenceJudge(WitnessSettings())
    j.ask_due(0.0, 1.0, 3.0)
    d = j.verdict(Unknown("no qemu-guest-agent channel"), 3.0)
    assert d.outcome is Outcome.NO_WITNESS and not d.vetoes_hang and d.by == "none"
