"""What guessing the operator password may cost the site.

Checking a password costs one scrypt: ~50 ms of a core and 16 MiB. Unbounded, a flood of
wrong passwords (login forms, bearers on ``/metrics``) would take every core from the
agents' chunk requests. So, before any scrypt:

* a credential without the shape of an operator password is refused outright
  (:func:`packdist.site.operator.looks_like_password`, checked by the caller);
* attempts are rate-limited per client address, per operator name the credential names, and
  for the whole site (token buckets); an attempt over a limit is answered 429 with
  ``Retry-After``. Per address: a guesser spraying many names from one address is slowed
  as much as one guessing one name (an attempt on a name nobody has counts the same). Per
  name: guessers spread over many addresses, all after ``admin``, share one bucket (a
  right credential gives its attempt back there: an operator is never locked out by its
  own logins, only by guesses);
* scrypt runs on one dedicated thread, one check at a time: an attempt arriving while one
  runs is answered 429 at once, never queued behind it.

A correct bearer is remembered (:class:`packdist.site.operator.CredentialCache`), so a
scraper polling every few seconds costs one scrypt per password, not one per request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from packdist.errors import RateLimited

PER_CLIENT_BURST = 5.0  # attempts a client address may make at once ...
PER_CLIENT_RATE = 0.2  # ... then this many per second
SITE_BURST = 10.0  # attempts from everyone together at once ...
SITE_RATE = 2.0  # ... then this many per second: at most a tenth of a core on scrypt
PER_NAME_BURST = 5.0  # attempts on one operator's name at once, from everywhere ...
PER_NAME_RATE = 0.2  # ... then this many per second
MAX_CLIENTS = 4096  # addresses remembered; beyond, the full (idle) buckets are forgotten


class Buckets:
    """One token bucket per key: ``burst`` attempts at once, refilled at ``rate`` a
    second."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_CLIENTS) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._level: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def _tokens(self, key: str, now: float) -> float:
        tokens, when = self._level.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - when) * self.rate)

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may make an attempt (0: now)."""
        tokens = self._tokens(key, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def give_back(self, key: str, now: float) -> None:
        """Return the attempt ``take`` counted (it was no guess: it was right)."""
        if key in self._level:
            self._level[key] = (min(self.burst, self._tokens(key, now) + 1.0), now)

    def take(self, key: str, now: float) -> None:
        self._level[key] = (self._tokens(key, now) - 1.0, now)
        if len(self._level) > self.max_keys:
            full = [k for k in self._level if self._tokens(k, now) >= self.burst]
            for k in full:
                del self._level[k]
            if len(self._level) > self.max_keys:  # all busy: forget them, the site's
                self._level.clear()  # own limit still holds


class PasswordGate:
    """Runs password checks (scrypt) within the limits above."""

    def __init__(self) -> None:
        self.clients = Buckets(PER_CLIENT_RATE, PER_CLIENT_BURST)
        self.names = Buckets(PER_NAME_RATE, PER_NAME_BURST)
        self.site = Buckets(SITE_RATE, SITE_BURST)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="scrypt")
        self._busy = False
        self.refused = 0  # attempts answered 429, for tests and curious operators

    async def check(self, client: str, check: Callable[[], bool], name: str = "") -> bool:
        """``check()`` (a password check) on the scrypt thread, or RateLimited when
        ``client``, the operator ``name`` or the site is over its limit or another check
        is running."""
        now = time.monotonic()
        if self._busy:
            self.refused += 1
            raise RateLimited("busy checking another password; try again in a second", 1.0)
        wait = self.clients.wait(client, now)
        if wait > 0:
            self.refused += 1
            raise RateLimited(
                f"too many password attempts from {client}; try again in {math.ceil(wait)}s", wait
            )
        wait = self.names.wait(name, now) if name else 0.0
        if wait > 0:
            self.refused += 1
            raise RateLimited(
                f"too many password attempts for operator {name}; try again in {math.ceil(wait)}s",
                wait,
            )
        wait = self.site.wait("", now)
        if wait > 0:
            self.refused += 1
            raise RateLimited(f"too many password attempts; try again in {math.ceil(wait)}s", wait)
        self.clients.take(client, now)
        if name:
            self.names.take(name, now)
        self.site.take("", now)
        self._busy = True
        try:
            ok = await asyncio.get_running_loop().run_in_executor(self._pool, check)
        finally:
            self._busy = False
        if ok and name:  # an operator logging in often is not guessing its own name
            self.names.give_back(name, time.monotonic())
        return ok

    def close(self) -> None:
        self._pool.shutdown(wait=False)
