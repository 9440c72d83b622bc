"""host_relay.backoff: the delay policy (bounds, jitter range, reset) and the retry loop."""

from __future__ import annotations

import asyncio
import random

import pytest

from host_relay.backoff import Backoff, BackoffPolicy, retry


def test_base_doubles_from_initial_up_to_maximum():
    policy = BackoffPolicy(0.5, 30.0, jitter=0.0)
    assert [policy.base(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert [policy.delay(n, 0.7) for n in range(1, 4)] == [0.5, 1, 2]  # no jitter: exact


def test_a_long_outage_stays_at_maximum_without_overflow():
    policy = BackoffPolicy(0.1, 60.0, factor=10.0)
    assert policy.base(10_000) == 60.0
    assert policy.delay(10**9, 0.0) == pytest.approx(60.0 * 0.8)


def test_jitter_spans_the_documented_range_and_never_exceeds_maximum():
    policy = BackoffPolicy(1.0, 10.0, jitter=0.2)
    assert policy.delay(1, 0.0) == pytest.approx(0.8)
    assert policy.delay(1, 0.5) == pytest.approx(1.0)
    assert policy.delay(1, 1.0) == pytest.approx(1.2)
    assert policy.delay(10, 1.0) == 10.0  # capped: maximum is a bound, not a centre
    rng = random.Random(7)
    seen = [policy.delay(3, rng.random()) for _ in range(2000)]
    assert min(seen) >= 3.2 and max(seen) <= 4.8
    assert min(seen) < 3.3 and max(seen) > 4.7  # the whole range is used, not one value
    capped = [policy.delay(20, rng.random()) for _ in range(2000)]
    assert min(capped) >= 8.0 and max(capped) == 10.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(initial=0.0, maximum=1.0), "positive"),
        (dict(initial=2.0, maximum=1.0), "at most maximum"),
        (dict(initial=1.0, maximum=2.0, jitter=1.5), "jitter"),
        (dict(initial=1.0, maximum=2.0, jitter=-0.1), "jitter"),
        (dict(initial=1.0, maximum=2.0, factor=0.5), "factor"),
        (dict(initial=1.0, maximum=float("inf")), "finite"),
        (dict(initial=float("nan"), maximum=2.0), "finite"),
        (dict(initial=1.0, maximum=2.0, stable_after=-1.0), "stable_after"),
        (dict(initial=True, maximum=2.0), "finite number"),
    ],
)
def test_policy_rejects_nonsense(kwargs, words):
    with pytest.raises(ValueError, match=words):
        BackoffPolicy(**kwargs)


def test_policy_rejects_a_count_below_one_and_rand_outside_unit():
    policy = BackoffPolicy(1.0, 2.0)
    with pytest.raises(ValueError):
        policy.base(0)
    with pytest.raises(ValueError):
        policy.delay(1, 1.5)


def test_backoff_counts_failures_and_reset_starts_over():
    backoff = Backoff(BackoffPolicy(1.0, 8.0, jitter=0.0, stable_after=None), rng=lambda: 0.5)
    assert [backoff.failed(now) for now in range(5)] == [1, 2, 4, 8, 8]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.failed(10.0) == 1.0


def test_an_attempt_that_lasted_stable_after_counts_as_success():
    backoff = Backoff(BackoffPolicy(1.0, 8.0, jitter=0.0, stable_after=60.0), rng=lambda: 0.5)
    for now in (0.0, 1.0, 2.0):
        backoff.started(now)
        backoff.failed(now + 0.5)
    assert backoff.failures == 3
    backoff.started(100.0)
    assert backoff.failed(159.9) == 8.0  # not quite stable: still backing off
    backoff.started(200.0)
    assert backoff.failed(260.0) == 1.0  # lasted 60 s: starts over
    assert backoff.failed(261.0) == 2.0  # no started(): no stability credit


def test_backoff_uses_the_injected_random_source():
    draws = iter([0.0, 1.0])
    backoff = Backoff(BackoffPolicy(1.0, 100.0, jitter=0.5), rng=lambda: next(draws))
    assert backoff.failed(0.0) == 0.5
    assert backoff.failed(0.0) == 3.0


def test_retry_sleeps_the_backoff_delays_until_success():
    slept: list[float] = []
    errors: list[tuple[str, float]] = []
    results = iter([OSError("in use"), OSError("still"), "bound"])

    async def attempt():
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    async def sleep(delay):
        slept.append(delay)

    backoff = Backoff(BackoffPolicy(2.0, 60.0, jitter=0.0))
    got = asyncio.run(retry(attempt, backoff, retry_on=(OSError,),
                            on_retry=lambda exc, d: errors.append((str(exc), d)),
                            clock=lambda: 0.0, sleep=sleep))
    assert got == "bound"
    assert slept == [2.0, 4.0]
    assert errors == [("in use", 2.0), ("still", 4.0)]
    assert backoff.failures == 0  # success resets


def test_retry_lets_other_errors_through():
    async def attempt():
        raise KeyError("bug")

    async def sleep(delay):  # pragma: no cover - must not be reached
        raise AssertionError("slept")

    with pytest.raises(KeyError):
        asyncio.run(retry(attempt, Backoff(BackoffPolicy(1.0, 2.0)), retry_on=(OSError,),
                          on_retry=lambda exc, d: None, sleep=sleep))
