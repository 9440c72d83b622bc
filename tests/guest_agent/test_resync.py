"""SyncAnswers: at most one answer per second, later syncs coalesced, others ignored."""

from __future__ import annotations

from guest_agent.resync import ANSWER_GAP, SyncAnswers
from iim_protocol.messages import Hello, Resume, Sync


def test_the_first_sync_is_answered_at_once() -> None:
    s = SyncAnswers()
    assert s.next_deadline() is None
    assert s.message(Sync(), 100.0) is True
    assert s.next_deadline() is None
    assert (s.stats.syncs_received, s.stats.answers, s.stats.coalesced) == (1, 1, 0)


def test_syncs_inside_the_window_coalesce_into_one_answer_at_its_end() -> None:
    s = SyncAnswers()
    assert s.message(Sync(), 100.0)
    for i in range(50):
        assert s.message(Sync(), 100.1 + i * 0.01) is False
    assert s.next_deadline() == 100.0 + ANSWER_GAP
    assert s.due(100.0 + ANSWER_GAP - 0.001) is False
    assert s.due(100.0 + ANSWER_GAP) is True
    assert s.due(100.0 + ANSWER_GAP) is False  # once
    assert s.next_deadline() is None
    # 51 syncs, 2 answers; the 49 after the one that set the deferred answer shared it.
    assert (s.stats.syncs_received, s.stats.answers, s.stats.coalesced) == (51, 2, 49)


def test_a_sync_after_the_window_is_answered_at_once_again() -> None:
    s = SyncAnswers()
    assert s.message(Sync(), 0.0)
    assert s.message(Sync(), ANSWER_GAP)  # exactly one gap later
    assert not s.message(Sync(), ANSWER_GAP + 0.5)
    assert s.due(2 * ANSWER_GAP)
    # The deferred answer starts a new window.
    assert not s.message(Sync(), 2 * ANSWER_GAP + 0.1)
    assert s.next_deadline() == 3 * ANSWER_GAP


def test_answers_never_come_closer_than_the_gap() -> None:
    s = SyncAnswers()
    answered = []
    t = 0.0
    for step in range(2000):  # a sync every 7 ms for 14 s, timers checked in between
        t = step * 0.007
        if s.due(t) or s.message(Sync(), t):
            answered.append(t)
    gaps = [b - a for a, b in zip(answered, answered[1:])]
    assert min(gaps) >= ANSWER_GAP - 1e-9
    assert 13 <= len(answered) <= 15  # about one a second for 14 s


def test_other_host_messages_are_counted_and_ignored() -> None:
    s = SyncAnswers()
    assert s.message(Resume(), 0.0) is False
    assert s.message(Hello(1, "x", "b", 1.0), 0.0) is False
    assert s.next_deadline() is None
    assert s.stats.ignored == 2 and s.stats.syncs_received == 0 and s.stats.answers == 0
    assert s.message(Sync(), 0.0) is True  # ignored messages do not use the window
