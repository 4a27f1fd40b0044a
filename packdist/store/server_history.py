"""The store's reads for one server's page: its newest instructions (with their jobs'
packages) and its newest events, each one indexed read (``instructions_server``,
``events_server``), whatever the size of the fleet's history."""

from __future__ import annotations

from packdist.store.db import Database, Row
from packdist.store.records import EventRecord
from packdist.store.reports import event_record


class ServerHistoryQueries:
    db: Database

    def server_history(self, server: str, limit: int) -> list[Row]:
        """The server's newest instructions first: ``id``, ``job_id``, ``state``,
        ``attempts``, ``last_error``, ``error_kind``, ``next_attempt_at``, ``updated_at``,
        ``action`` and the package's ``name`` and ``version``."""
        return self.db.rows("server_instructions_newest", server=server, limit=limit)

    def server_events(self, server: str, limit: int) -> list[EventRecord]:
        """The server's newest ``limit`` events, oldest first."""
        rows = self.db.rows("server_events_newest", server=server, limit=limit)
        return [event_record(r) for r in reversed(rows)]
