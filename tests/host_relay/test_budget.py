"""The host-wide CPU budget for guest input: fair shares, debt, waits (sans-I/O)."""

from __future__ import annotations

import pytest

from host_relay.budget import BURST, TRICKLE, DecodeBudget, fair_rate


def read_floods(flooders, next_read: list[float], t: float, chunk_cost: float) -> None:
    """Each flooder whose wait is over reads a chunk, or is told how long to wait."""
    for i, acc in enumerate(flooders):
        if t >= next_read[i]:
            wait = acc.wait(t)
            if wait > 0:
                next_read[i] = t + wait
            else:
                acc.charge(chunk_cost, t)


def test_fair_rate_gives_light_channels_what_they_used_and_splits_the_rest():
    # 0.25 of a core: one quiet channel used 0.001, two flooders want more.
    assert fair_rate([0.001], 2, 0.25) == pytest.approx((0.25 - 0.001) / 2)
    # Nobody wanted more: any channel may use the whole budget.
    assert fair_rate([0.01, 0.02], 0, 0.25) == 0.25
    # Light channels that together would exceed the budget are capped evenly.
    assert fair_rate([0.2, 0.2], 0, 0.25) == pytest.approx(0.125)
    assert fair_rate([0.01, 0.2, 0.2], 1, 0.25) == pytest.approx(0.08)
    assert fair_rate([], 4, 0.2) == pytest.approx(0.05)


def test_a_channel_in_debt_waits_until_it_is_paid_back():
    budget = DecodeBudget(0.1, now=0.0)
    acc = budget.account(0.0)
    assert acc.wait(0.0) == 0.0  # starts with a small bank
    acc.charge(0.05, 0.0)  # one expensive chunk, decoded whole
    wait = acc.wait(0.0)
    # In debt by 0.05 - 0.1 * BURST; refills at 0.1 CPU s per s.
    assert wait == pytest.approx((0.05 - 0.1 * BURST) / 0.1, abs=2e-3)
    assert acc.wait(wait) == 0.0
    assert acc.waits == 1 and acc.cpu_total == pytest.approx(0.05)


def test_flooders_share_the_budget_and_a_quiet_channel_keeps_its_need():
    """60 flooders and one quiet channel for 20 s: CPU stays within the budget."""
    budget = DecodeBudget(0.25, now=0.0)
    flooders = [budget.account(0.0) for _ in range(60)]
    quiet = budget.account(0.0)
    chunk_cost = 0.002  # CPU s per 64 KiB chunk, whatever the guest sends
    next_read = [0.0] * 60
    quiet_waits = 0
    t, step = 0.0, 0.001
    while t < 20.0:
        read_floods(flooders, next_read, t, chunk_cost)
        if abs(t - round(t)) < step / 2:  # one heartbeat a second
            quiet_waits += quiet.wait(t) > 0
            quiet.charge(0.0001, t)
        t += step
    spent = sum(a.cpu_total for a in flooders) + quiet.cpu_total
    # Within the budget over the run (plus the first window, before shares were known).
    assert spent / 20.0 <= 0.25 * 1.15, spent
    assert spent / 20.0 >= 0.25 * 0.6, spent  # and the flooders do get the rest
    assert quiet_waits == 0  # never held back
    per = sorted(a.cpu_total for a in flooders)
    # Even between flooders; the first to read had the host-wide burst to itself.
    assert per[-2] <= per[0] * 1.2, per
    assert per[-1] <= per[0] + 0.25, per  # at most one window's budget ahead
    assert budget.heavy <= 60


def test_2000_honest_channels_are_never_held_back_even_with_flooders_and_a_busy_loop():
    """Their heartbeats together cost more than the budget: each stays within its trickle."""
    loop = [0.0]
    budget = DecodeBudget(0.25, now=0.0, loop_cpu=lambda: loop[0])
    honest = [budget.account(0.0) for _ in range(2000)]
    flooders = [budget.account(0.0) for _ in range(2)]
    held = 0
    for second in range(30):
        for i, acc in enumerate(honest):  # one heartbeat a second each, 0.3 ms
            t = second + i / 2000
            held += acc.wait(t) > 0
            acc.charge(0.0003, t)
        for acc in flooders:
            t = second + 0.5
            if acc.wait(t) == 0:
                acc.charge(0.05, t)
        loop[0] += 1.0  # the loop thread busy all the time
    assert held == 0
    assert sum(a.cpu_total for a in flooders) / 30 <= 0.25 + 2 * TRICKLE + 0.05


def test_closed_accounts_leave_the_shares():
    budget = DecodeBudget(0.2, now=0.0)
    a, b = budget.account(0.0), budget.account(0.0)
    for acc in (a, b):
        acc.charge(1.0, 0.0)
        acc.wait(0.0)
    budget.rollover(1.0)
    assert budget.rate == pytest.approx(0.1)
    b.close()
    a.wait(1.5)
    budget.rollover(2.0)
    assert budget.rate == pytest.approx(0.2)
    assert budget.channels == 1
    b.open()
    assert budget.channels == 2


def test_the_budget_is_a_fraction_of_a_core():
    with pytest.raises(ValueError):
        DecodeBudget(0.0, now=0.0)
    with pytest.raises(ValueError):
        DecodeBudget(1.5, now=0.0)


def test_loop_cpu_beyond_what_was_charged_shrinks_the_budget():
    """Reads that cost the loop 3x what was measured around them get a third of the budget."""
    loop = [0.0]
    budget = DecodeBudget(0.3, now=0.0, loop_cpu=lambda: loop[0])
    a, b = budget.account(0.0), budget.account(0.0)
    for acc in (a, b):
        acc.charge(0.1, 0.5)
        acc.wait(0.5)  # both contend
    loop[0] = 0.6  # the loop's thread spent 0.6 CPU s for 0.2 charged
    budget.rollover(1.0)
    assert budget.overhead == pytest.approx(3.0)
    assert budget.rate == pytest.approx(0.3 / 3 / 2)
    # Nobody contends: no correction.
    loop[0] = 0.7
    a.charge(0.01, 1.5)
    budget.rollover(2.0)
    assert budget.overhead == 1.0




def test_an_honest_channel_is_never_held_for_more_than_a_window():
    """2,000 channels: 1,999 arm at once over their trickles and overdraw the host; the
    fair share is then 2,000-way, and the last one is charged a 20 ms spike.

    Paid off at those rates, the host's debt takes 30 s and the spike 160 s: as a
    sleep, a silence long enough to report a healthy guest hung.
    """
    budget = DecodeBudget(0.25, now=0.0)
    accs = [budget.account(0.0) for _ in range(2000)]
    unlucky, others = accs[0], accs[1:]
    t = 0.0
    for acc in others:  # a first read of 4 ms each (hello, arming, logging)
        acc.charge(0.004, t)
    unlucky.charge(0.00005, t)
    waits = [acc.wait(t) for acc in others]
    assert max(waits) <= budget.window + 0.002, max(waits)
    t += max(waits)
    for acc in others:  # a new window: the trickles are back, heartbeats are read
        assert acc.wait(t) == 0.0
        acc.charge(0.00005, t)
    assert budget.rate < 0.25 / 1000  # the 1,999 that waited share the budget
    unlucky.charge(0.02, t)  # a garbage collection while its heartbeat was decoded
    wait = unlucky.wait(t)
    assert 0 < wait <= budget.window + 0.002, wait
    assert unlucky.balance < -0.01  # still owed: it is only not slept off at once
    t += wait
    others[0].charge(0.00005, t)  # anyone's read rolls the window over
    assert unlucky.wait(t) == 0.0


def test_flooders_among_2000_channels_wait_their_debts_off():
    """The one-window bound is for a light channel's first spike: 60 flooders of 10 ms
    chunks beside 1,940 honest channels still get no more than the budget."""
    budget = DecodeBudget(0.25, now=0.0)
    flooders = [budget.account(0.0) for _ in range(60)]
    quiet = [budget.account(0.0) for _ in range(1940)]
    next_read = [0.0] * 60
    t, step, end = 0.0, 0.005, 12.0
    while t < end:
        if abs(t - round(t)) < step / 2:
            for acc in quiet:
                assert acc.wait(t) == 0.0
                acc.charge(0.00005, t)
        read_floods(flooders, next_read, t, 0.01)
        t += step
    spent = sum(a.cpu_total for a in flooders)
    # The first window is free for all (each may be a one-off); then the budget holds.
    assert (spent - 60 * 0.01) / (end - 1.0) <= 0.25 * 1.15, spent
