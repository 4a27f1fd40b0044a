"""The store's rollouts: a rollout's row, its waves, and the one writer of their states.

A rollout's or a wave's state changes only by an event of
:data:`packdist.states.ROLLOUT_TRANSITIONS` / :data:`~packdist.states.WAVE_TRANSITIONS`,
applied here with a guarded update (``… WHERE state IN (sources)``): two site workers that
judge the same wave at once change it once, and the loser's transaction is rolled back
(:class:`~packdist.errors.InvalidTransition`). When a wave starts or fails is decided in
:mod:`packdist.service.rollouts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from packdist import states
from packdist.errors import InvalidTransition
from packdist.states import RolloutState, WaveState
from packdist.store.db import Database, Row
from packdist.store.records import EventRecord
from packdist.store.reports import event_record

#: the columns besides ``state`` each kind of event may set
ROLLOUT_SETS = frozenset({"why"})
WAVE_SETS = frozenset({"job_id", "started_at", "judged_at", "failed"})


@dataclass(frozen=True)
class WaveRecord:
    number: int  # from 1
    servers: tuple[str, ...]  # the servers this wave adds (waves are cumulative)
    state: WaveState
    job_id: str | None  # its job, once started
    started_at: float | None
    judged_at: float | None
    failed: int | None  # servers it counted failed when judged


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    package_id: str
    package_ref: str
    state: RolloutState
    error_threshold: float  # percent of a wave that may fail
    wave_timeout: float  # seconds
    options: dict[str, Any]  # its jobs' options
    schedule: str  # core.schedule.Schedule.to_json()
    why: str | None
    created_at: float
    updated_at: float
    waves: tuple[WaveRecord, ...]

    @property
    def servers(self) -> list[str]:
        return [s for w in self.waves for s in w.servers]


class RolloutQueries:
    db: Database

    def insert_rollout(
        self,
        rollout_id: str,
        package_id: str,
        waves: list[list[str]],
        error_threshold: float,
        wave_timeout: float,
        options: dict[str, Any],
        schedule: str,
        now: float,
    ) -> None:
        with self.db.transaction():
            self.db.run(
                "insert_rollout",
                id=rollout_id,
                package_id=package_id,
                state=RolloutState.RUNNING.value,
                error_threshold=error_threshold,
                wave_timeout=wave_timeout,
                options=json.dumps(options, sort_keys=True),
                schedule=schedule,
                now=now,
            )
            self.db.run_many(
                "insert_wave",
                [
                    {
                        "rollout": rollout_id,
                        "number": n,
                        "servers": json.dumps(servers),
                        "state": WaveState.WAITING.value,
                    }
                    for n, servers in enumerate(waves, 1)
                ],
            )

    def rollout(self, rollout_id: str) -> RolloutRecord | None:
        row = self.db.row("rollout_by_id", id=rollout_id)
        if row is None:
            return None
        return _rollout(row, self.db.rows("waves_of_rollout", rollout=rollout_id))

    def rollouts(self, limit: int = 100) -> list[RolloutRecord]:
        """The newest rollouts first, with their waves."""
        rows = self.db.rows("rollouts_newest", limit=limit)
        if not rows:
            return []
        waves: dict[str, list[Row]] = {}
        for w in self.db.rows("waves_of_rollouts", rollouts=[r["id"] for r in rows]):
            waves.setdefault(w["rollout"], []).append(w)
        return [_rollout(r, waves.get(r["id"], [])) for r in rows]

    def unfinished_rollout_ids(self) -> list[str]:
        """The ids of the rollouts running or paused, oldest first (the serve loop reads
        each one again under its lock: the ids are all it needs of this list)."""
        running = sorted(s.value for s in RolloutState if s not in states.ROLLOUT_DONE)
        return [r["id"] for r in self.db.rows("rollout_ids_in_states", states=running)]

    def rollout_events(self, rollout_id: str, limit: int = 100) -> list[EventRecord]:
        """The rollout's own events (created, waves started and judged, paused, resumed),
        oldest first."""
        rows = self.db.rows("rollout_events", prefix=f"rollout {rollout_id}%", limit=limit)
        return [event_record(r) for r in reversed(rows)]

    def lock_rollout(self, rollout_id: str) -> RolloutRecord | None:
        """In a transaction: lock the rollout's row (the first lock of every change to a
        rollout or its waves: one order, so two workers never deadlock) and read it as it
        is now."""
        if self.db.row("lock_rollout", id=rollout_id) is None:
            return None
        return self.rollout(rollout_id)

    def set_rollout_why(self, rollout_id: str, why: str | None) -> None:
        """Why a rollout waits (a closed window), whatever its state; None: it does not."""
        self.db.run("set_rollout_why", id=rollout_id, why=why)

    def apply_rollout(self, event: str, rollout_id: str, now: float, **sets: Any) -> None:
        """Apply a rollout event; InvalidTransition if the rollout is not in a source state."""
        froms, to = states.ROLLOUT_TRANSITIONS[event]
        self._apply("rollout_transition", ROLLOUT_SETS, froms, to, sets, id=rollout_id, now=now)

    def apply_wave(self, event: str, rollout_id: str, number: int, **sets: Any) -> None:
        """Apply a wave event; InvalidTransition if the wave is not in a source state."""
        froms, to = states.WAVE_TRANSITIONS[event]
        self._apply(
            "wave_transition", WAVE_SETS, froms, to, sets, rollout=rollout_id, number=number
        )

    def _apply(
        self,
        query: str,
        allowed: frozenset[str],
        froms: frozenset[Any],
        to: Any,
        sets: dict[str, Any],
        **keys: Any,
    ) -> None:
        refused = set(sets) - allowed
        if refused:
            raise ValueError(f"{query} may not set {', '.join(sorted(refused))}")
        assignments = "".join(f", {column} = :set_{column}" for column in sorted(sets))
        params = {f"set_{k}": v for k, v in sets.items()}
        changed = self.db.rows_of(
            self.db.sql(query, assignments=assignments),
            {**keys, **params, "to_state": to.value, "from_states": sorted(s.value for s in froms)},
        )
        if not changed:
            what = " ".join(str(v) for v in keys.values())
            raise InvalidTransition(
                f"{query.split('_')[0]} {what} is not {' or '.join(sorted(s.value for s in froms))}"
                " any more (another worker or operator changed it)"
            )


def _wave(r: Row) -> WaveRecord:
    return WaveRecord(
        number=int(r["number"]),
        servers=tuple(json.loads(r["servers"])),
        state=WaveState(r["state"]),
        job_id=r["job_id"],
        started_at=r["started_at"],
        judged_at=r["judged_at"],
        failed=r["failed"],
    )


def _rollout(r: Row, waves: list[Row]) -> RolloutRecord:
    return RolloutRecord(
        id=r["id"],
        package_id=r["package_id"],
        package_ref=f"{r['name']}@{r['version']}",
        state=RolloutState(r["state"]),
        error_threshold=float(r["error_threshold"]),
        wave_timeout=float(r["wave_timeout"]),
        options=json.loads(r["options"]),
        schedule=r["schedule"],
        why=r["why"],
        created_at=float(r["created_at"]),
        updated_at=float(r["updated_at"]),
        waves=tuple(_wave(w) for w in sorted(waves, key=lambda w: int(w["number"]))),
    )
