"""RetryPolicy: backoff, cap, jitter and limits, with an injected random function and clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packdist.retry import RetryDecision, RetryPolicy


def fixed(value: float) -> float:
    """A stand-in for ``random.random`` that always returns ``value``."""
    return value


MID = 0.5  # rand() == 0.5 means no jitter at all
LOW = 0.0  # the most negative spread
HIGH = 1.0 - 1e-12  # the most positive spread random.random can produce

NOW = 10_000.0
CREATED = 9_000.0


def no_jitter() -> float:
    return MID


def lowest() -> float:
    return LOW


def highest() -> float:
    return HIGH


def test_backoff_grows_exponentially_without_jitter() -> None:
    policy = RetryPolicy(initial=1.0, factor=2.0, cap=1_000.0, jitter=0.2)
    assert [policy.delay(n, no_jitter) for n in range(1, 7)] == [1, 2, 4, 8, 16, 32]


def test_backoff_respects_initial_and_factor() -> None:
    policy = RetryPolicy(initial=0.5, factor=3.0, cap=1_000.0, jitter=0.0)
    assert [policy.delay(n, lowest) for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]


def test_attempt_zero_or_negative_waits_the_initial_delay() -> None:
    policy = RetryPolicy(initial=2.0, factor=2.0, cap=60.0, jitter=0.0)
    assert policy.delay(0, no_jitter) == 2.0
    assert policy.delay(-3, no_jitter) == 2.0


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(initial=1.0, factor=2.0, cap=60.0, jitter=0.0)
    assert policy.delay(6, no_jitter) == 32.0
    assert policy.delay(7, no_jitter) == 60.0
    assert policy.delay(50, no_jitter) == 60.0


def test_jitter_never_pushes_past_the_cap() -> None:
    policy = RetryPolicy(initial=1.0, factor=2.0, cap=60.0, jitter=0.5)
    assert policy.delay(20, highest) == 60.0
    assert policy.delay(20, lowest) == pytest.approx(30.0)


def test_jitter_spreads_both_ways() -> None:
    policy = RetryPolicy(initial=10.0, factor=2.0, cap=1_000.0, jitter=0.2)
    assert policy.delay(1, lowest) == pytest.approx(8.0)
    assert policy.delay(1, no_jitter) == pytest.approx(10.0)
    assert policy.delay(1, highest) == pytest.approx(12.0)


@given(
    attempt=st.integers(min_value=1, max_value=5_000),
    rand=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    initial=st.floats(min_value=0.01, max_value=100.0),
    factor=st.floats(min_value=1.0, max_value=10.0),
    cap=st.floats(min_value=0.01, max_value=10_000.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_jitter_stays_within_bounds(
    attempt: int, rand: float, initial: float, factor: float, cap: float, jitter: float
) -> None:
    policy = RetryPolicy(initial=initial, factor=factor, cap=cap, jitter=jitter)
    base = policy.delay(attempt, no_jitter)
    assert base <= cap
    delay = policy.delay(attempt, lambda: rand)
    assert 0.0 <= delay <= cap
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


def test_delay_uses_the_injected_random_function() -> None:
    calls: list[int] = []

    def rand() -> float:
        calls.append(1)
        return MID

    RetryPolicy().delay(3, rand)
    assert calls == [1]


def test_decide_returns_now_plus_delay() -> None:
    policy = RetryPolicy(initial=1.0, factor=2.0, cap=60.0, jitter=0.2)
    decision = policy.decide(3, job_created_at=CREATED, now=NOW, rand=no_jitter)
    assert decision == RetryDecision(NOW + 4.0)
    assert not decision.give_up
    assert decision.reason == ""


def test_default_policy_retries_forever() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts is None
    assert policy.deadline is None
    for attempts in (1, 10, 100, 1_000):
        decision = policy.decide(attempts, job_created_at=0.0, now=NOW, rand=highest)
        assert not decision.give_up
        assert decision.retry_at is not None
        assert NOW <= decision.retry_at <= NOW + policy.cap


@pytest.mark.parametrize("attempts", [1_024, 1_025, 2_000, 10**6])
def test_very_many_attempts_do_not_overflow(attempts: int) -> None:
    # A target that is down for a day with a 60 s cap passes a thousand attempts; the
    # exponent must not overflow a float and stop the retries.
    policy = RetryPolicy()
    decision = policy.decide(attempts, job_created_at=0.0, now=NOW, rand=no_jitter)
    assert decision.retry_at == NOW + policy.cap


def test_max_attempts_gives_up_with_a_reason() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert not policy.decide(1, CREATED, NOW, no_jitter).give_up
    assert not policy.decide(2, CREATED, NOW, no_jitter).give_up
    decision = policy.decide(3, CREATED, NOW, no_jitter)
    assert decision.give_up
    assert decision.retry_at is None
    assert "3 attempts" in decision.reason
    assert policy.decide(4, CREATED, NOW, no_jitter).give_up


def test_max_attempts_of_one_never_retries() -> None:
    decision = RetryPolicy(max_attempts=1).decide(1, CREATED, NOW, no_jitter)
    assert decision.give_up


def test_deadline_gives_up_when_the_next_attempt_would_be_late() -> None:
    policy = RetryPolicy(initial=10.0, factor=2.0, cap=60.0, jitter=0.0, deadline=100.0)
    created = 0.0
    # next attempt at 80 + 10 = 90 <= 100: still retried
    assert policy.decide(1, created, now=80.0, rand=no_jitter) == RetryDecision(90.0)
    # exactly on the deadline still counts
    assert policy.decide(1, created, now=90.0, rand=no_jitter) == RetryDecision(100.0)
    late = policy.decide(1, created, now=95.0, rand=no_jitter)
    assert late.give_up
    assert "deadline" in late.reason
    assert "100s" in late.reason


def test_deadline_is_relative_to_job_creation() -> None:
    policy = RetryPolicy(initial=1.0, jitter=0.0, deadline=50.0)
    assert not policy.decide(1, job_created_at=1_000.0, now=1_040.0, rand=no_jitter).give_up
    assert policy.decide(1, job_created_at=1_000.0, now=1_050.0, rand=no_jitter).give_up


def test_max_attempts_is_checked_before_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=2, deadline=1.0)
    decision = policy.decide(2, job_created_at=0.0, now=100.0, rand=no_jitter)
    assert decision.give_up
    assert "attempts" in decision.reason


def test_with_limits_overrides_only_what_is_given() -> None:
    base = RetryPolicy(initial=2.0, factor=3.0, cap=30.0, jitter=0.1, max_attempts=5)
    assert base.with_limits(None, None) == base
    limited = base.with_limits(2, 60.0)
    assert limited == RetryPolicy(2.0, 3.0, 30.0, 0.1, 2, 60.0)
    assert base.with_limits(None, 10.0) == RetryPolicy(2.0, 3.0, 30.0, 0.1, 5, 10.0)


def test_give_up_property() -> None:
    assert RetryDecision(None, "why").give_up
    assert not RetryDecision(0.0).give_up


def test_a_policys_own_limits_stand_when_a_job_sets_none() -> None:
    base = RetryPolicy(max_attempts=4, deadline=30.0)
    assert base.with_limits(None, None) == base
    assert base.with_limits(2, None) == RetryPolicy(max_attempts=2, deadline=30.0)
