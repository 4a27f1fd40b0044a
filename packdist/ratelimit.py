"""Bandwidth limits: one token bucket per direction, shared by every transfer that uses it.

A site caps what it uploads (chunks to agents); an agent caps what it downloads (from the
site and peers) and what it uploads (to peers). Each transfer calls :meth:`Bucket.take`
with the bytes it is about to send, or has just received, and sleeps as long as the bucket
says: the sleep turns into TCP back-pressure, so the other side slows down too.

A rate of 0 (the default) means no limit and costs nothing.
"""

from __future__ import annotations

import asyncio
import re
import time

from packdist.errors import UserError

#: how many seconds of traffic may go out at once after a quiet spell
BURST_SECONDS = 0.25

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_BITS = {"kbit": 1000 / 8, "mbit": 1000**2 / 8, "gbit": 1000**3 / 8}
_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*?)(?:/s|ps)?\s*$")


def parse_rate(text: str | int | float) -> float:
    """Bytes per second from ``"12.5MB"``, ``"100mbit"``, ``"2MiB/s"`` or a plain number
    of bytes per second; 0 means unlimited."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _RATE.match(str(text))
        unit = m.group(2).lower() if m else ""
        if m is None or (unit not in _UNITS and unit not in _BITS):
            raise UserError(
                f"bad rate {text!r}: say e.g. 100mbit, 12.5MB, 2MiB (per second) or 0 for no limit"
            )
        value = float(m.group(1)) * (_BITS[unit] if unit in _BITS else _UNITS[unit])
    if value < 0:
        raise UserError(f"bad rate {text!r}: must not be negative")
    return value


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
