"""The store: every table of a site behind intent-named queries, on one :class:`Database`.

It is split by concern (the catalogue, instructions with the one writer of state, jobs and
the matrix read from summaries, reports) and written once for every database; what differs between SQLite and PostgreSQL is in
:mod:`packdist.store.sqlite` and :mod:`packdist.store.postgres`. The rules of the domain
(which instructions an event applies to, and what it means) are in :mod:`packdist.service`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from packdist.store.activations import ActivationQueries
from packdist.store.catalog import CatalogQueries
from packdist.store.children import ChildQueries
from packdist.store.clients import ClientQueries
from packdist.store.db import Database
from packdist.store.instructions import InstructionQueries
from packdist.store.presence import PresenceQueries
from packdist.store.reports import ReportQueries
from packdist.store.rollouts import RolloutQueries
from packdist.store.search import SearchQueries
from packdist.store.server_history import ServerHistoryQueries
from packdist.store.summaries import SummaryQueries


class Store(
    ActivationQueries,
    CatalogQueries,
    ChildQueries,
    ClientQueries,
    InstructionQueries,
    PresenceQueries,
    SummaryQueries,
    ReportQueries,
    RolloutQueries,
    ServerHistoryQueries,
    SearchQueries,
):
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction for everything inside (re-entrant)."""
        with self.db.transaction():
            yield

    def notify(self, channel: str = "work") -> None:
        """Wake the site's workers (at commit): a new job, a server back, a retry."""
        self.db.notify(channel)

    def listen(self, callback: Callable[[], None], channel: str = "work") -> bool:
        """``callback`` on every :meth:`notify` of another worker (from another thread);
        False if this database has no notifications."""
        return self.db.listen(channel, callback)

    @property
    def concurrency(self) -> int:
        return self.db.concurrency

    def close(self) -> None:
        self.db.close()
