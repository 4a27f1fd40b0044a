"""How often agents heartbeat, as the site directs it, and when to shed heartbeats.

**The interval.** Like a BitTorrent tracker's announce interval, the site tells each agent,
in every hello and heartbeat answer, how many seconds to wait before the next heartbeat:
``clamp(servers / HEARTBEAT_BUDGET, MIN_INTERVAL, MAX_INTERVAL)``, ``servers`` being those
this site process hears from. The heartbeats of a growing fleet then stay near a fixed rate
(``HEARTBEAT_BUDGET`` per second) rather than growing with it, up to the fleet at which
``MAX_INTERVAL`` is reached; ``MAX_INTERVAL`` keeps a returning server's next heartbeat (which
wakes its retrying work) within seconds of its return.

Every silence that means "offline" follows the interval: a server is offline once silent
for ``OFFLINE_INTERVALS`` of the longest interval handed out lately (an agent told 10 s a
moment ago still waits 10 s, whatever the fleet did since).

**Shedding.** Under overload the site answers heartbeats and hellos ``503`` with a
``Retry-After`` before anything else suffers (:class:`Admission`): when more heartbeats
arrive than ``RATE_LIMIT`` a second (a token bucket: ``RATE_BURST`` seconds' worth may come
at once), when the event loop runs late (``LAG_LIMIT``, at ``LAG_LOOKS`` looks in a row), or
when ``STORE_SLOTS`` heartbeats already wait on the store (where claims of new work and the
dashboard queue too). A shed heartbeat still proves the server alive: it is never what
makes a server look offline, or "back".
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from packdist.protocol.pace import MAX_INTERVAL

HEARTBEAT_BUDGET = 1000.0  # heartbeats per second a fleet is spread to
MIN_INTERVAL = 2.0  # seconds: a small fleet heartbeats this often
# MAX_INTERVAL (10 s, the agents' own bound): however large the fleet, a returning server
# that did not notice its outage waits at most this (see protocol/site_api.py)
OFFLINE_INTERVALS = 3  # silent for this many intervals (plus SLACK): offline
#: the floor of every "silent": a server not heard from for this long is likely unreachable
#: (the despooler's cap on attempts to such servers, the tracker's offers)
SILENT_AFTER = 10.0
SLACK = 1.0
#: above this many heartbeats a second, on average, the rest are shed: agents that obey the
#: interval stay well under it
RATE_LIMIT = 3 * HEARTBEAT_BUDGET  # (2x was the demand of 20,000 servers at the ceiling:
# their heartbeats were shed by chance alone, and the fleet never heartbeat normally again)
#: while the despooler has work under way, heartbeats beyond the budget are shed: the
#: work that moves packages comes first, and a shed heartbeat still proves its server alive
BUSY_RATE_LIMIT = HEARTBEAT_BUDGET
#: seconds' worth of heartbeats at a rate limit that may arrive at once: the heartbeats that
#: queued behind one pause of the event loop (a full collection takes half a second at
#: 20,000 connections) arrive together, and are no overload (a count per calendar second
#: shed them, and the agents' backoff from it kept them from normal for over a minute)
RATE_BURST = 2.0
LAG_LIMIT = 0.25  # seconds the event loop may run late before heartbeats are shed
LAG_TICK = 0.05  # seconds between two looks at the event loop's lateness
#: the event loop counts as late only when it was late at each of this many looks in a row:
#: one pause (a full collection of a 20,000-connection heap takes about half a second) is no
#: overload, and shedding the heartbeats that queued behind it sent 20,000 agents into
#: backoff in waves that kept them from normal heartbeats for over a minute after a job
LAG_LOOKS = 3
STORE_SLOTS = 32  # heartbeats (and hellos) waiting on the store at once; beyond: shed
MAX_RETRY_AFTER = 30.0  # seconds; agents add up to half of it again as jitter


def interval_for(servers: int) -> float:
    """The heartbeat interval for a fleet of ``servers``, in whole half-seconds (so that a
    fleet growing by one server does not change every answer)."""
    wanted = servers / HEARTBEAT_BUDGET
    return min(MAX_INTERVAL, max(MIN_INTERVAL, math.ceil(wanted * 2) / 2))


def _offline(interval: float) -> float:
    return OFFLINE_INTERVALS * interval + SLACK


def offline_after_for(servers: int) -> float:
    """Seconds of silence after which a server of a fleet of ``servers`` counts as offline,
    at the interval such a fleet is given (:meth:`Cadence.offline_after` follows the
    intervals actually handed out; this is for views that only know the fleet's size)."""
    return _offline(interval_for(servers))


class Cadence:
    """The interval this site hands out, and the silences that follow from it."""

    def __init__(self, servers: int = 0) -> None:
        self.interval = interval_for(servers)
        self._longest = self.interval  # the longest handed out within the last window
        self._longest_until = 0.0

    def follow(self, servers: int, now: float | None = None) -> float:
        """Set the interval for a fleet of ``servers``; returns it."""
        now = time.monotonic() if now is None else now
        new = interval_for(servers)
        if self.interval > new:  # agents told the longer one still wait it out
            self._longest = max(self.longest(now), self.interval)  # a second drop as well
            self._longest_until = now + OFFLINE_INTERVALS * MAX_INTERVAL
        self.interval = new
        return new

    def longest(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if now < self._longest_until:
            return max(self.interval, self._longest)
        return self.interval

    def offline_after(self) -> float:
        """Seconds of silence after which a server counts as offline (and, heard from again,
        as back: its retrying work is woken)."""
        return _offline(self.longest())

    def retry_after(self) -> float:
        """Seconds a shed agent is told to wait (it adds its own jitter)."""
        return min(MAX_RETRY_AFTER, 2 * self.longest())


class _Allowance:
    """Room for heartbeats at ``rate`` a second, up to :data:`RATE_BURST` seconds' worth
    at once (a token bucket, told the time)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.level = rate * RATE_BURST
        self._at: float | None = None

    def has_room(self, now: float) -> bool:
        if self._at is not None and now > self._at:
            self.level = min(self.rate * RATE_BURST, self.level + (now - self._at) * self.rate)
        self._at = now if self._at is None else max(self._at, now)
        return self.level >= 1.0

    def take(self) -> None:
        self.level = max(0.0, self.level - 1.0)


class Admission:
    """Whether a heartbeat (or hello) is taken now or shed; see the module docstring."""

    def __init__(
        self,
        rate_limit: float = RATE_LIMIT,
        busy_rate_limit: float = BUSY_RATE_LIMIT,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.busy = busy
        self.lag = 0.0  # how late the event loop ran, at least, at each of its last looks
        self.waiting_on_store = 0
        self.shed = 0  # since start
        self.why: dict[str, int] = {}  # sheds by reason, since the last look (see shed_lately)
        self._all = _Allowance(rate_limit)  # heartbeats taken per second, at most
        self._while_busy = _Allowance(busy_rate_limit)  # the same while ``busy()``; every
        # heartbeat taken counts here too, busy or not

    @property
    def rate_limit(self) -> float:
        return self._all.rate

    @rate_limit.setter
    def rate_limit(self, rate: float) -> None:  # a new limit starts with its burst unspent
        self._all = _Allowance(rate)

    def overloaded(self, now: float) -> bool:
        """True if this heartbeat should be shed (counted when taken)."""
        room, busy_room = self._all.has_room(now), self._while_busy.has_room(now)
        if not room:
            why = "rate"
        elif not busy_room and self.busy():
            why = "rate, jobs under way"
        elif self.lag > LAG_LIMIT:
            why = "event loop late"
        elif self.waiting_on_store >= STORE_SLOTS:
            why = "store queue"
        else:
            self._all.take()
            self._while_busy.take()
            return False
        self.shed += 1
        self.why[why] = self.why.get(why, 0) + 1
        return True

    def shed_lately(self) -> str:
        """What was shed since the last call, in words ("" if nothing), for the log."""
        if not self.why:
            return ""
        words = ", ".join(f"{n} ({why})" for why, n in sorted(self.why.items()))
        self.why = {}
        return words

    async def watch_lag(self) -> None:
        """Measure how late the event loop runs, until cancelled."""
        import asyncio  # here: the command line's views import this module, and start fast

        loop = asyncio.get_running_loop()
        looks: deque[float] = deque([0.0], maxlen=LAG_LOOKS)
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_TICK)
            looks.append(max(0.0, loop.time() - started - LAG_TICK))
            self.lag = min(looks) if len(looks) == LAG_LOOKS else 0.0
