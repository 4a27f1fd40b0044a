"""What the store reports for operators: the status matrix, events and metrics totals."""

from __future__ import annotations

import bisect
from typing import Any

from packdist import states
from packdist.states import InstructionState
from packdist.store.db import Database, Row
from packdist.store.records import EventRecord, MetricsTotals, StatusCell

S = InstructionState


def _event(row: Row) -> EventRecord:
    return EventRecord(
        id=row["id"],
        at=row["at"],
        job_id=row["job_id"],
        server=row["server"],
        kind=row["kind"],
        message=row["message"],
    )


class ReportQueries:
    db: Database

    def _newest_instructions(self) -> dict[tuple[str, str], Row]:
        """(server, package id) -> the newest instruction of that pair."""
        newest: dict[tuple[str, str], Row] = {}
        for r in self.db.rows("live_instructions_oldest_first"):
            newest[(r["server"], r["package_id"])] = r
        return newest

    def status_matrix(self) -> dict[str, dict[str, str]]:
        """package ref -> server -> state word."""
        refs = self.package_refs()  # type: ignore[attr-defined]
        matrix: dict[str, dict[str, str]] = {}
        for r in self.db.rows("live_holdings"):
            ref = refs.get(r["package_id"], r["package_id"][:12])
            word = "corrupt" if r["corrupt"] is not None else "installed"
            matrix.setdefault(ref, {})[r["server"]] = word
        # Unfinished work shows where nothing is installed yet; the newest job wins. A copy
        # found corrupt stays "corrupt" until its repair is installed (verified). After a
        # removal job (the newest), nothing shows where nothing is installed.
        for (server, pid), r in self._newest_instructions().items():
            if r["action"] == "remove" or r["state"] == S.INSTALLED.value:
                continue
            cell = matrix.setdefault(refs.get(pid, pid[:12]), {})
            if cell.get(server) not in ("installed", "corrupt"):
                cell[server] = r["state"]
        return {ref: cells for ref, cells in matrix.items() if cells}

    def status_cells(self) -> list[StatusCell]:
        """Every (package, server) pair that has an instruction or an installed copy, for
        servers not removed; ordered by package ref, then server."""
        installed = {
            (r["server"], r["package_id"]): r["corrupt"] for r in self.db.rows("live_holdings")
        }
        refs = self.package_refs()  # type: ignore[attr-defined]
        newest = self._newest_instructions()
        cells = []
        for server, pid in installed.keys() | newest.keys():
            r: Row | dict[str, Any] = newest.get((server, pid)) or {}
            cells.append(
                StatusCell(
                    package_ref=refs.get(pid, pid[:12]),
                    package_id=pid,
                    server=server,
                    installed=(server, pid) in installed,
                    state=S(r["state"]) if r else None,
                    job_id=r.get("job_id"),
                    attempts=r.get("attempts", 0),
                    last_error=r.get("last_error"),
                    next_attempt_at=r.get("next_attempt_at"),
                    bytes_sent=r.get("bytes_sent", 0),
                    bytes_total=r.get("bytes_total", 0),
                    updated_at=r.get("updated_at"),
                    corrupt=installed.get((server, pid)),
                    action=r.get("action", "install"),
                    error_kind=r.get("error_kind"),
                )
            )
        return sorted(cells, key=lambda c: (c.package_ref, c.server))

    def events(self, job_id: str | None = None, after_id: int = 0) -> list[EventRecord]:
        if job_id is None:
            rows = self.db.rows("events_after", after=after_id)
        else:
            rows = self.db.rows("job_events_after", after=after_id, job_id=job_id)
        return [_event(r) for r in rows]

    def recent_events(self, limit: int, job_id: str | None = None) -> list[EventRecord]:
        """The newest ``limit`` events (of one job if given), oldest first."""
        if job_id is None:
            rows = self.db.rows("newest_events", limit=limit)
        else:
            rows = self.db.rows("newest_job_events", limit=limit, job_id=job_id)
        return [_event(r) for r in reversed(rows)]

    def metrics_totals(self, transfer_bounds: tuple[float, ...]) -> MetricsTotals:
        instructions = {s.value: 0 for s in S}
        for r in self.db.rows("instructions_by_state"):
            instructions[r["state"]] = int(r["n"])
        sums = self.db.row("instruction_sums") or {"attempts": 0, "bytes_sent": 0}
        per_job: dict[str, list[InstructionState]] = {}
        actions: dict[str, str] = {}
        for r in self.db.rows("instruction_states_by_job"):
            per_job.setdefault(r["job_id"], []).append(S(r["state"]))
            actions[r["job_id"]] = r["action"]
        jobs = {s.value: 0 for s in states.JobState}
        for job_id, job_states in per_job.items():
            jobs[states.job_state(job_states, actions[job_id]).value] += 1
        events = {r["kind"]: int(r["n"]) for r in self.db.rows("events_by_kind")}
        durations = sorted(float(r["d"]) for r in self.db.rows("install_durations"))
        counts = [bisect.bisect_right(durations, float(b)) for b in transfer_bounds]
        return MetricsTotals(
            instructions,
            jobs,
            int(sums["attempts"]),
            int(sums["bytes_sent"]),
            events,
            tuple(transfer_bounds),
            tuple(counts),
            len(durations),
            float(sum(durations)),
        )
