"""The one retry policy: exponential backoff with jitter and a cap, optional limits."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry_at: float | None  # when to try again; None: give up
    reason: str = ""  # why we give up

    @property
    def give_up(self) -> bool:
        return self.retry_at is None


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff ``initial * factor**(attempt-1)``, capped, with +/- ``jitter`` spread.

    By default a target is retried until it is installed or an operator cancels.
    ``max_attempts`` or ``deadline`` (seconds after the job was created) turn it failed.
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.2
    max_attempts: int | None = None
    deadline: float | None = None

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            grown = self.initial * self.factor ** max(0, attempt - 1)
        except OverflowError:  # retried forever: past ~1024 attempts factor**n overflows
            grown = self.cap
        base = min(self.cap, grown)
        spread = base * self.jitter * (2 * rand() - 1)
        return max(0.0, min(self.cap, base + spread))

    def decide(
        self,
        attempts: int,
        job_created_at: float,
        now: float,
        rand: Callable[[], float] = random.random,
    ) -> RetryDecision:
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return RetryDecision(None, f"gave up after {attempts} attempts")
        retry_at = now + self.delay(attempts, rand)
        if self.deadline is not None and retry_at > job_created_at + self.deadline:
            return RetryDecision(None, f"deadline of {self.deadline:g}s passed")
        return RetryDecision(retry_at)

    def with_limits(self, max_attempts: int | None, deadline: float | None) -> RetryPolicy:
        return RetryPolicy(
            self.initial,
            self.factor,
            self.cap,
            self.jitter,
            max_attempts if max_attempts is not None else self.max_attempts,
            deadline if deadline is not None else self.deadline,
        )
