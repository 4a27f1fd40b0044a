"""The store's record of who runs: each ``site serve`` worker and when it last said it
runs, so that a command run in the site's home can tell that none does; and which servers
went offline (marked once, so their event is written once).

Plain reads and writes by intent; what counts as running is decided in
:mod:`packdist.service.presence`.
"""

from __future__ import annotations

from dataclasses import dataclass

from packdist.store.db import Database

FORGET_AFTER = 7 * 86400.0  # seconds after which a worker's row is dropped


@dataclass(frozen=True)
class WorkersSeen:
    last_seen: float | None  # the latest any worker said it runs (None: never served)
    running: int  # workers not stopped that said so since the time asked about


@dataclass(frozen=True)
class Refusal:
    server: str  # the server the agent was taken for
    at: float
    remote: str  # the address it called from
    reason: str  # "wrong" (a token of no server) or "revoked" (an earlier token of it)


class PresenceQueries:
    db: Database

    def site_worker_seen(self, worker: str, now: float) -> None:
        """``worker`` (``host:pid``) runs: it said so at ``now``."""
        self.db.run("site_worker_seen", worker=worker, now=now)

    def site_worker_started(self, worker: str, now: float) -> None:
        """``worker`` starts: seen now, and rows of workers long gone dropped."""
        with self.db.transaction():
            self.db.run("site_workers_forgotten", before=now - FORGET_AFTER)
            self.db.run("site_worker_seen", worker=worker, now=now)

    def site_worker_stopped(self, worker: str, now: float) -> None:
        """``worker`` stopped cleanly."""
        self.db.run("site_worker_stopped", worker=worker, now=now)

    def site_workers_seen(self, since: float) -> WorkersSeen:
        rows = self.db.rows("site_workers_seen", since=since)
        row = rows[0] if rows else None
        if row is None or not row["workers"]:
            return WorkersSeen(None, 0)
        return WorkersSeen(row["last_seen"], int(row["running"] or 0))

    def mark_servers_offline(
        self, names: list[str], before: float, now: float
    ) -> list[tuple[str, float]]:
        """Of ``names``, those not heard from since ``before`` and not marked yet, marked
        offline at ``now``: ``(name, last_seen)`` of each (once per going offline, whichever
        worker saw it first)."""
        if not names:
            return []
        rows = self.db.rows("mark_servers_offline", names=names, before=before, now=now)
        return sorted((r["name"], r["last_seen"]) for r in rows)

    def mark_server_online(self, name: str) -> bool:
        """The server is heard from again: True if it was marked offline."""
        return self.db.run("mark_server_online", name=name) > 0

    def mark_servers_heard(self, names: list[str]) -> list[str]:
        """Of ``names``, whose heartbeats were just written, those marked offline before
        them: marked online again (returned)."""
        if not names:
            return []
        return sorted(r["name"] for r in self.db.rows("mark_servers_heard", names=names))

    def replace_token_hash(self, name: str, token_hash: str) -> bool:
        """A new enrollment token for an enrolled server (the old one void); False if no
        such server is enrolled."""
        return self.db.run("replace_token_hash", name=name, token_hash=token_hash) > 0

    def servers_with_url_port(self, port: int) -> list[tuple[str, str]]:
        """``(name, url)`` of the enrolled servers whose URL ends in ``:port``."""
        rows = self.db.rows("servers_with_url_port", pattern=f"%:{port}")
        return [(r["name"], r["url"]) for r in rows]

    def agent_refused(self, server: str, at: float, remote: str, reason: str, since: float) -> bool:
        """An agent taken for ``server``'s was refused (the latest kept): True if it is
        news, no refusal of it having come since ``since`` (whichever worker took it)."""
        rows = self.db.rows(
            "agent_refused", server=server, at=at, remote=remote, reason=reason, since=since
        )
        return bool(rows and rows[0]["news"])

    def agents_refused_since(self, since: float) -> dict[str, Refusal]:
        """The servers whose agent was refused since ``since``, with the latest refusal."""
        rows = self.db.rows("agents_refused_since", since=since)
        return {r["server"]: Refusal(r["server"], r["at"], r["remote"], r["reason"]) for r in rows}

    def refusals_forgotten(self, server: str) -> None:
        self.db.run("refusals_forgotten", server=server)
