"""What a rollout looks like to an operator, as data: the document ``rollout show --json``
prints and the dashboard's rollout pages render (one read: the rollout, its waves, and the
instruction counts of the waves' jobs)."""

from __future__ import annotations

from typing import Any

from packdist.core.schedule import Schedule
from packdist.core.timefmt import iso
from packdist.service.activation import ACTIVATE, HEALTH_CHECK
from packdist.store.base import Store
from packdist.store.rollouts import RolloutRecord

Counts = dict[str, dict[str, int]]


def wave_counts(store: Store, rollout: RolloutRecord) -> Counts:
    """job id -> state -> instructions, for the waves that started."""
    return store.job_counts([w.job_id for w in rollout.waves if w.job_id])


def rollout_json(r: RolloutRecord, counts: Counts | None = None) -> dict[str, Any]:
    """As ``rollout show --json`` prints it (the contract's fields first); with ``counts``,
    each started wave's instructions by state."""
    waves, upto = [], 0
    for w in r.waves:
        upto += len(w.servers)
        # servers: the ones this wave adds (waves are disjoint); cumulative: how many have
        # been targeted once it started (the size the --waves option gave)
        doc: dict[str, Any] = {
            "servers": list(w.servers),
            "state": w.state.value,
            "job": w.job_id,
            "cumulative": upto,
        }
        if counts is not None:
            found = counts.get(w.job_id, {}) if w.job_id else {}
            doc["counts"] = {k: v for k, v in found.items() if v}
        doc["started_at"] = iso(w.started_at) if w.started_at else None
        doc["failed"] = w.failed
        waves.append(doc)
    return {
        "id": r.id,
        "package": r.package_ref,
        "state": r.state.value,
        "waves": waves,
        "why": r.why,
        "error_threshold": r.error_threshold,
        "wave_timeout": r.wave_timeout,
        "activate": bool(r.options.get(ACTIVATE)),
        "health_check": r.options.get(HEALTH_CHECK),
        "schedule": Schedule.from_json(r.schedule).text(),
        "created_at": iso(r.created_at),
    }


def rollout_doc(store: Store, rollout: RolloutRecord) -> dict[str, Any]:
    return rollout_json(rollout, wave_counts(store, rollout))
