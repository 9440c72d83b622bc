"""The host-wide silence guard: engage on a burst, hold hangs only, release on a witness."""

from __future__ import annotations

from host_relay.silence_guard import SilenceGuard
from host_relay.witnesses import Alive, Hung, Unknown

NO = Unknown("no witness")


def test_a_burst_of_silences_engages_and_holds_hangs_but_never_failures():
    g = SilenceGuard(min_instances=3, min_percent=25.0, window=10.0)
    assert g.set_armed(10, 0.0) == []
    assert g.silent("a", 1.0, 2.0) == []
    assert g.silent("b", 1.5, 2.0) == []
    assert not g.holds("a", "guest_hang", NO)
    (changed,) = g.silent("c", 3.0, 4.0)
    assert changed.engaged and changed.silent == 3 and "3 of 10" in changed.why
    assert g.holds("a", "guest_hang", NO)
    assert g.holds("b", "guest_hang", Alive("guest_agent"))
    assert not g.holds("c", "guest_hang", Hung("guest_agent", "timed out"))  # its own witness
    assert not g.holds("a", "process_failure", NO)  # positive evidence is never held
    assert g.status().held == 1 and g.status().engaged
    (cleared,) = g.heard("a", 9.0)
    assert not cleared.engaged and g.status().held == 0
    assert not g.holds("b", "guest_hang", NO)
    assert g.engaged_count == 1


def test_silences_spread_beyond_the_window_are_separate_hangs():
    g = SilenceGuard(min_instances=3, min_percent=25.0, window=10.0)
    g.set_armed(4, 0.0)
    g.silent("a", 0.0, 0.0)
    g.silent("b", 12.0, 12.0)
    assert g.silent("c", 24.0, 24.0) == []  # a is 24 s old, b 12 s: outside one window
    assert not g.engaged


def test_percent_threshold_on_a_big_host_and_count_threshold_on_a_small_one():
    big = SilenceGuard(min_instances=3, min_percent=25.0, window=10.0)
    big.set_armed(100, 0.0)
    assert big.needed() == 25
    for i in range(24):
        big.silent(str(i), 1.0, 1.0)
    assert not big.engaged
    big.silent("24", 1.0, 1.0)
    assert big.engaged
    small = SilenceGuard(min_instances=3, min_percent=25.0, window=10.0)
    small.set_armed(2, 0.0)
    small.silent("a", 1.0, 1.0)
    small.silent("b", 1.0, 1.0)
    assert not small.engaged  # both of two: under min_instances, each its own hang
    # Fewer armed instances (instances stopped) can engage it on a tick too.
    g = SilenceGuard(min_instances=2, min_percent=50.0, window=10.0)
    g.set_armed(6, 0.0)
    g.silent("a", 1.0, 1.0)
    g.silent("b", 1.0, 1.0)
    assert not g.engaged
    (changed,) = g.set_armed(4, 2.0)
    assert changed.engaged
