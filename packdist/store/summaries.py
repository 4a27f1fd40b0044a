"""Jobs as operators read them, from the store's summaries rather than the history.

The schema keeps, in the transaction of every change, how many instructions of each job
are in each state (``job_state_counts``, by triggers on ``instructions``) and which
instruction is the newest of each (server, package) (``newest_instructions``). A job is
read as its counts plus one page of its instructions; the package x server matrix as one
row per cell; the front page as a tally of those cells and one page of servers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from packdist import states
from packdist.errors import NotFound
from packdist.states import InstructionState
from packdist.store.db import Database, Row
from packdist.store.instructions import instruction_record
from packdist.store.records import InstructionRecord, JobRecord

S = InstructionState
EVERY_ROW = 2**62  # a LIMIT both dialects take for "no limit"


def _no_counts() -> dict[str, int]:
    return {s.value: 0 for s in S}


class SummaryQueries:
    db: Database

    # --- jobs -------------------------------------------------------------------------------

    def job_counts(self, job_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """job id -> state -> how many of its instructions are in it (every state present)."""
        ids = sorted(set(job_ids))
        counts = {j: _no_counts() for j in ids}
        if ids:
            for r in self.db.rows("job_state_counts", job_ids=ids):
                counts[r["job_id"]][r["state"]] = int(r["n"])
        return counts

    def _job(self, row: Row, counts: dict[str, int], instructions: list[Row]) -> JobRecord:
        return JobRecord(
            id=row["id"],
            package_id=row["package_id"],
            package_ref=f"{row['name']}@{row['version']}",
            created_at=row["created_at"],
            max_attempts=row["max_attempts"],
            deadline=row["deadline"],
            options=json.loads(row["options"]),
            instructions=tuple(instruction_record(r) for r in instructions),
            action=row["action"],
            counts=counts,
        )

    def get_job(
        self,
        job_id: str,
        states: Iterable[InstructionState] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> JobRecord:
        """A job with its counts and its instructions in server order: every one, or those
        in ``states``, from ``offset``, at most ``limit`` (0: none, only the counts)."""
        row = self.db.row("job_by_id", id=job_id)
        if row is None:
            raise NotFound(f"no job {job_id}")
        counts = self.job_counts([job_id])[job_id]
        return self._job(row, counts, self.job_instructions_page(job_id, states, limit, offset))

    def job_instructions_page(
        self,
        job_id: str,
        states: Iterable[InstructionState] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Row]:
        """Rows of one job's instructions in server order (one indexed read)."""
        if limit == 0:
            return []
        wanted = sorted({s.value for s in states}) if states is not None else None
        if wanted is None and limit is None and not offset:
            return self.db.rows("instructions_of_job", job_id=job_id)
        page: dict[str, Any] = {
            "job_id": job_id,
            "limit": EVERY_ROW if limit is None else int(limit),
            "offset": int(offset),
        }
        if wanted is None:
            return self.db.rows("instructions_of_job_page", **page)
        return self.db.rows("instructions_of_job_in_page", states=wanted, **page)

    def list_jobs(
        self, limit: int = 100, package: str | None = None, version: str | None = None
    ) -> list[JobRecord]:
        """The newest jobs (of package ``package``, of its ``version`` if given), newest
        first, each with its counts and no instruction."""
        if package is None:
            rows = self.db.rows("recent_jobs", limit=limit)
        else:
            rows = self.db.rows(
                "recent_jobs_of_package", name=package, version=version or "", limit=limit
            )
        counts = self.job_counts(r["id"] for r in rows)
        return [self._job(r, counts[r["id"]], []) for r in rows]

    def job_preview(
        self, job_id: str, order: Iterable[InstructionState], limit: int, counts: dict[str, int]
    ) -> list[InstructionRecord]:
        """Up to ``limit`` of a job's instructions, the states in ``order`` first (each in
        server order); ``counts`` (the job's) skip the states it has none in."""
        found: list[Row] = []
        for state in order:
            left = limit - len(found)
            if left <= 0:
                break
            if counts.get(state.value, 0) > 0:
                found += self.job_instructions_page(job_id, [state], left)
        return [instruction_record(r) for r in found]

    # --- the matrix -------------------------------------------------------------------------

    def matrix_tally(self) -> list[Row]:
        """Per package (``package_id``), what decides the words of the live servers' cells
        and how many cells share it: ``state``, ``action``, ``error_kind`` of the newest
        instruction, ``n`` cells, ``held`` and ``corrupt`` of them; then copies held where
        no instruction went (``state`` None)."""
        rows: list[Row] = list(self.db.rows("matrix_tally"))
        for r in self.db.rows("holdings_tally"):
            rows.append(
                {
                    "package_id": r["package_id"],
                    "state": None,
                    "action": "install",
                    "error_kind": None,
                    "n": r["n"],
                    "held": r["n"],
                    "corrupt": r["corrupt"],
                }
            )
        return rows

    def server_counts(self, online_since: float) -> tuple[int, int]:
        """Servers not removed, and of them those heard from since ``online_since``."""
        row = self.db.row("live_server_count", online_since=online_since) or {}
        return int(row.get("n") or 0), int(row.get("online") or 0)

    def servers_attention_first(self, online_since: float, limit: int) -> list[str]:
        """Up to ``limit`` server names: those with a cell in trouble first, then those
        not heard from since ``online_since``, then the rest, each by name."""
        rows = self.db.rows(
            "servers_attention_first",
            online_since=online_since,
            limit=limit,
            trouble=sorted(s.value for s in states.TROUBLE),
        )
        return [r["name"] for r in rows]
