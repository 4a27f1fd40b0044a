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

``Service`` (``service/facade.py``) gathers them all; a command that needs only some imports
them alone (``JobUseCases(store, actor)``): the names below are loaded when first used, so
that importing ``packdist.service.jobs`` does not load every use case of a site.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from packdist.service.attempts import STOPPING_KINDS
    from packdist.service.facade import Service

#: each name of the package and the module that holds it
_WHERE = {"STOPPING_KINDS": "attempts", "Service": "facade"}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{where}"), name)


__all__ = ["STOPPING_KINDS", "Service"]
