"""The service layer: every use case of a site, above the store and below its front ends.

The CLI, the dashboard, the site's HTTP API and the despooler call these; none of them
builds a job or changes a state by hand. Each use case runs in one transaction of the store,
decides in Python which instructions an event applies to, and words its events and errors::

    CLI / dashboard / site API / despooler
                    │
                 Service        jobs (distribute, remove, supersede, cancel, retry),
                    │           attempts (claim, settle by failure kind, leases),
                    │           fleet (packages, servers, heartbeats, validation, repairs),
                    │           hierarchy (child sites, their reports),
                    │           activation (active versions, rollback),
                    │           rollouts (waves, error thresholds, pause/resume/cancel),
                    │           clients (registered, their sources nearest first, fetches)
                  Store         named queries, rows mapped by column name; one writer of state
                    │
          SQLite  |  PostgreSQL
"""

from __future__ import annotations

from packdist.service.attempts import STOPPING_KINDS
from packdist.service.clients import ClientUseCases
from packdist.service.rollouts import RolloutUseCases
from packdist.store.core import Store


class Service(RolloutUseCases, ClientUseCases):
    """Every use case, on one store (cheap to make: it holds only the store)."""

    def __init__(self, store: Store, actor: str | None = None) -> None:
        self.store = store
        self.actor = actor  # the operator whose actions these are (None: the site's own)


__all__ = ["STOPPING_KINDS", "Service"]
