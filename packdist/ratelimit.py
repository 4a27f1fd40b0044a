"""Bandwidth limits: one token bucket per direction, shared by every transfer that uses it.

A site caps what it uploads (chunks to agents); an agent caps what it downloads (from the
site and peers) and what it uploads (to peers). Each transfer calls :meth:`Bucket.take`
with the bytes it is about to send, or has just received, and sleeps as long as the bucket
says: the sleep turns into TCP back-pressure, so the other side slows down too.

A rate of 0 (the default) means no limit and costs nothing.
"""

from __future__ import annotations

import asyncio
import time

from packdist.core.rates import parse_rate

__all__ = ["BURST_SECONDS", "Bucket", "parse_rate"]

#: how many seconds of traffic may go out at once after a quiet spell
BURST_SECONDS = 0.25


class Bucket:
    """A token bucket of ``rate`` bytes per second (0: unlimited)."""

    def __init__(self, rate: float = 0.0) -> None:
        self.rate = float(rate)
        self._level = 0.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def limited(self) -> bool:
        return self.rate > 0

    def _delay(self, n: int) -> float:
        now = time.monotonic()
        burst = self.rate * BURST_SECONDS
        self._level = min(burst, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        self._level -= n  # may go negative: the debt is paid by sleeping
        return max(0.0, -self._level / self.rate)

    async def take(self, n: int) -> None:
        """Account for ``n`` bytes; return when sending (or having received) them keeps the
        average rate within the limit."""
        if self.rate <= 0 or n <= 0:
            return
        async with self._lock:  # one waiter at a time: transfers share the rate fairly
            delay = self._delay(n)
            if delay > 0:
                await asyncio.sleep(delay)
