"""Each kind of guest-caused line once a minute per instance, then a count of the rest."""

from __future__ import annotations

import logging

from host_relay.log_budget import MAX_KINDS, LogBudget

LOG = logging.getLogger("tests.log_budget")


def test_one_line_a_minute_per_kind_then_the_count_of_those_held_back(caplog):
    caplog.set_level(logging.INFO, logger="tests.log_budget")
    budget = LogBudget()
    assert budget.log(LOG, logging.INFO, "hello", 0.0, "agent %s started", "a")
    for i in range(999):  # 1,000 hellos in a second
        assert not budget.log(LOG, logging.INFO, "hello", i / 1000, "agent %s started", "a")
    assert budget.log(LOG, logging.WARNING, "bad", 0.5, "garbage")  # another kind: its own minute
    assert not budget.log(LOG, logging.INFO, "hello", 59.9, "agent %s started", "a")
    assert budget.log(LOG, logging.INFO, "hello", 60.0, "agent %s started", "b")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == ["agent a started", "garbage",
                     "agent b started (1000 more suppressed in the last 60 s)"]
    assert budget.suppressed == {"hello": 1000}  # exact, kept for status and metrics
    assert budget.total == 1000
    # The count restarts with each line logged.
    assert budget.log(LOG, logging.INFO, "hello", 121.0, "agent %s started", "c")
    assert caplog.records[-1].getMessage() == "agent c started"


def test_held_back_lines_still_reach_debug(caplog):
    caplog.set_level(logging.DEBUG, logger="tests.log_budget")
    budget = LogBudget()
    budget.log(LOG, logging.INFO, "k", 0.0, "x %d", 1)
    budget.log(LOG, logging.INFO, "k", 1.0, "x %d", 2)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "x 1"), (logging.DEBUG, "x 2")]


def test_kinds_are_bounded():
    budget = LogBudget()
    for i in range(MAX_KINDS + 50):
        budget.log(LOG, logging.DEBUG, f"kind{i}", 0.0, "m")
    assert len(budget._last) <= MAX_KINDS + 1
    assert budget.suppressed["other"] == 49
