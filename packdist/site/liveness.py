"""Heartbeats that cost almost nothing: liveness held in memory, written in batches.

Most heartbeats say only "still here": the same boot, the same packages, a little less disk
free. Such a heartbeat changes this site process's memory and nothing else; every
``FLUSH_EVERY`` seconds the times (and disk figures) that changed are written to the store
in one transaction. A heartbeat that says anything else -- the server was silent, restarted,
holds other packages, or was never heard of by this process -- is recorded in full, through
the service (:meth:`packdist.service.Service.record_heartbeat`), which wakes its retries.

Several site workers each remember what they heard; the store's ``last_seen`` is at most
``FLUSH_EVERY`` behind, which is well within the silence that counts as offline. An
enrollment token is looked up once, then kept: every ``TOKEN_CHECK_EVERY`` seconds the
tokens kept are checked against the store in one query, and those of servers removed (or
enrolled again) are dropped, so a removed server is refused within that time, at the cost
of one query every few seconds however large the fleet. A token not confirmed for
``TOKEN_TTL`` (the store unreachable) is looked up again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from packdist.protocol.messages import Heartbeat
from packdist.store.records import ServerRecord

FLUSH_EVERY = 2.0  # seconds between two batched writes of last_seen
#: seconds between two checks of the tokens kept (a revoked token works at most this long)
TOKEN_CHECK_EVERY = 5.0
#: seconds a token is kept without a check confirming it (the checks failing)
TOKEN_TTL = 60.0


@dataclass
class _Seen:
    last_seen: float
    boot_id: str
    disk_free: int | None
    installed: frozenset[str]
    excused_until: float = 0.0  # told to wait (shed) until about then: not offline before


class Liveness:
    """What this process heard from each server, and what it has not written yet."""

    def __init__(self, offline_after: float | Callable[[], float]) -> None:
        # seconds of silence that make a server offline: a callable follows the interval
        # the site hands out (see :mod:`packdist.site.cadence`)
        self._offline_after = offline_after if callable(offline_after) else lambda: offline_after
        self._seen: dict[str, _Seen] = {}
        self._tokens: dict[str, tuple[ServerRecord, float]] = {}
        self._unreached: set[str] = set()  # a call to them failed since their last heartbeat
        self._dirty: set[str] = set()  # heard since the last write (a batch walks only these)
        #: servers heard from, least recently first: those that fell silent are found at
        #: its front, without a walk over the fleet (a server leaves it once gone silent,
        #: and comes back with its next heartbeat)
        self._by_time: OrderedDict[str, None] = OrderedDict()

    @property
    def offline_after(self) -> float:
        return self._offline_after()

    def last_heard(self, server: str) -> float | None:
        """When this process last heard from ``server`` (None: not since it started)."""
        seen = self._seen.get(server)
        return None if seen is None else seen.last_seen

    def servers(self) -> int:
        """How many servers this process has heard from (the fleet its interval is for)."""
        return len(self._seen)

    def unreached(self, server: str) -> None:
        """A call to ``server`` failed (and will be retried): its next heartbeat, whenever it
        comes, is recorded in full and wakes its retrying work, as after a silence."""
        self._unreached.add(server)

    def reached_again(self, server: str) -> bool:
        """True (once) if a call to ``server`` failed since its last recorded heartbeat."""
        if server in self._unreached:
            self._unreached.discard(server)
            return True
        return False

    def quiet(self, server: str, beat: Heartbeat, now: float) -> bool:
        """True if this heartbeat changes nothing but the time and the free disk: it is
        then remembered, to be written with the next batch. False: record it in full."""
        seen = self._seen.get(server)
        if (
            seen is None
            or seen.boot_id != beat.boot_id
            or (now - seen.last_seen > self._offline_after() and now > seen.excused_until)
            or seen.installed != frozenset(beat.installed)
            or server in self._unreached
        ):
            return False
        seen.last_seen = max(seen.last_seen, now)
        seen.disk_free = beat.disk_free
        self._dirty.add(server)
        self._heard_now(server)
        return True

    def _heard_now(self, server: str) -> None:
        self._by_time[server] = None
        self._by_time.move_to_end(server)

    def went_silent(self, now: float) -> list[str]:
        """Servers heard from by this process that have been silent longer than the
        offline bound since: each returned once per silence (at the cost of the servers
        returned, not of the fleet)."""
        out: list[str] = []
        bound = self._offline_after()
        for _ in range(len(self._by_time)):
            name = next(iter(self._by_time))
            seen = self._seen.get(name)
            if seen is None:  # forgotten (its write failed, or it left)
                del self._by_time[name]
                continue
            if now - seen.last_seen <= bound:
                break  # everyone behind it was heard from later
            if now <= seen.excused_until:  # told to wait: not offline yet
                self._by_time.move_to_end(name)
                continue
            del self._by_time[name]
            out.append(name)
        return out

    def silent_again(self, names: list[str]) -> None:
        """``went_silent`` returned these, but their going offline could not be recorded:
        judged again next time, first (they are the longest silent), unless heard since."""
        for name in reversed(names):
            if name in self._seen and name not in self._by_time:
                self._by_time[name] = None
                self._by_time.move_to_end(name, last=False)

    def recorded(self, server: str, beat: Heartbeat, now: float) -> None:
        """A heartbeat was recorded in full (the store is up to date for it)."""
        self._dirty.discard(server)
        self._seen[server] = _Seen(now, beat.boot_id, beat.disk_free, frozenset(beat.installed))
        self._heard_now(server)

    def installed(self, server: str, package_id: str) -> None:
        """The site recorded ``server``'s verified install of ``package_id``: its next
        heartbeat, which lists it, says nothing new (no write per install)."""
        seen = self._seen.get(server)
        if seen is not None:
            seen.installed = seen.installed | {package_id}

    def heard(self, server: str, now: float, told_to_wait: float = 0.0) -> None:
        """A heartbeat of ``server`` was shed unread, the agent told to wait up to
        ``told_to_wait`` seconds: it still proves the server alive, so neither its silence
        until then nor that wait makes it offline (unless it was offline already: then its
        next heartbeat taken must still count as its return)."""
        seen = self._seen.get(server)
        if seen is not None and (
            now - seen.last_seen <= self._offline_after() or now <= seen.excused_until
        ):
            seen.last_seen = max(seen.last_seen, now)
            seen.excused_until = max(seen.excused_until, now + told_to_wait)
            self._dirty.add(server)
            self._heard_now(server)

    def take_dirty(self) -> list[tuple[str, float, int | None]]:
        """``(server, last_seen, disk_free)`` heard since the last call, to be written."""
        out = []
        names, self._dirty = self._dirty, set()
        for name in sorted(names):  # one lock order for every worker (PostgreSQL rows)
            seen = self._seen.get(name)
            if seen is not None:
                out.append((name, seen.last_seen, seen.disk_free))
        return out

    def forget(self, server: str) -> None:
        """Record the next heartbeat in full (the last write failed, or the server left)."""
        self._seen.pop(server, None)
        self._dirty.discard(server)
        self._by_time.pop(server, None)

    # --- enrollment tokens ------------------------------------------------------------------

    def server_of(
        self, token_hash: str, now: float | None = None, stale_ok: bool = False
    ) -> ServerRecord | None:
        """The server of a token, as looked up lately (``stale_ok``: however long ago, for
        telling who a shed heartbeat came from, never for letting it in)."""
        found = self._tokens.get(token_hash)
        now = time.monotonic() if now is None else now
        if found is None or (found[1] < now and not stale_ok):
            return None
        return found[0]

    def remember_token(
        self, token_hash: str, server: ServerRecord, now: float | None = None
    ) -> None:
        now = time.monotonic() if now is None else now
        if len(self._tokens) > 200_000:  # bounded: many servers, or a flood of valid ones
            self._tokens.clear()
        self._tokens[token_hash] = (server, now + TOKEN_TTL)

    def tokens_kept(self) -> list[str]:
        """The token hashes kept, to be checked against the store."""
        return list(self._tokens)

    def tokens_checked(
        self, checked: list[str], valid: set[str], now: float | None = None
    ) -> list[str]:
        """The store says which of ``checked`` are still valid: those are kept another
        ``TOKEN_TTL``, the others dropped (and returned)."""
        now = time.monotonic() if now is None else now
        dropped = []
        for token_hash in checked:
            found = self._tokens.get(token_hash)
            if found is None:
                continue
            if token_hash in valid:
                self._tokens[token_hash] = (found[0], now + TOKEN_TTL)
            else:
                del self._tokens[token_hash]
                dropped.append(token_hash)
                # removed (or enrolled again): not counted in the fleet the interval is
                # for, and its next heartbeat, if any, is recorded in full
                self.forget(found[0].name)
                self._unreached.discard(found[0].name)
        return dropped
