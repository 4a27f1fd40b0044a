"""What the store reports for operators: the status matrix, events and metrics totals."""

from __future__ import annotations

from packdist import states
from packdist.states import InstructionState
from packdist.store.db import Database, Row
from packdist.store.records import EventRecord, MetricsTotals, StatusCell

S = InstructionState
_STATES = {s.value: s for s in S}
_SERVER_BATCH = 500  # names per query (SQLite's placeholders are limited)
NO_LIMIT = 2**62  # a LIMIT both dialects take as "every row"


def event_record(row: Row) -> EventRecord:
    return EventRecord(
        id=row["id"],
        at=row["at"],
        job_id=row["job_id"],
        server=row["server"],
        kind=row["kind"],
        message=row["message"],
        actor=row["actor"],
    )


class ReportQueries:
    db: Database

    def _newest_instructions(self, servers: list[str] | None = None) -> dict[tuple[str, str], Row]:
        """(server, package id) -> the newest instruction of that pair (of servers not
        removed, or of ``servers``): one row per pair, from the summary of newest."""
        if servers is None:
            rows = self.db.rows("live_newest_instructions")
        else:
            rows = self._of_servers("newest_instructions_of_servers", servers)
        return {(r["server"], r["package_id"]): r for r in rows}

    def _of_servers(self, query: str, servers: list[str]) -> list[Row]:
        found: list[Row] = []
        for i in range(0, len(servers), _SERVER_BATCH):
            found += self.db.rows(query, servers=servers[i : i + _SERVER_BATCH])
        return found

    def status_matrix(self, cells: list[StatusCell] | None = None) -> dict[str, dict[str, str]]:
        """package ref -> server -> state word (of ``cells`` if given, else read)."""
        matrix: dict[str, dict[str, str]] = {}
        # Unfinished work shows where nothing is installed yet; the newest job wins. A copy
        # found corrupt stays "corrupt" until its repair is installed (verified). After a
        # removal job (the newest), nothing shows where nothing is installed.
        for c in self.status_cells() if cells is None else cells:
            if c.installed:
                word = "corrupt" if c.corrupt is not None else "installed"
            elif c.state is None or c.action == "remove" or c.state is S.INSTALLED:
                continue
            else:
                word = c.state.value
            matrix.setdefault(c.package_ref, {})[c.server] = word
        return matrix

    def package_cells(self, package_id: str) -> list[StatusCell]:
        """:meth:`status_cells` of one package, on every server not removed (two reads by
        the package: its newest instructions, its copies)."""
        holdings = self.db.rows("holdings_of_package", package_id=package_id)
        newest = self.db.rows("newest_instructions_of_package", package_id=package_id)
        return self._cells(holdings, {(r["server"], r["package_id"]): r for r in newest})

    def status_cells(self, servers: list[str] | None = None) -> list[StatusCell]:
        """Every (package, server) pair that has an instruction or an installed copy, for
        servers not removed (or for ``servers``); ordered by package ref, then server."""
        holdings = (
            self.db.rows("live_holdings")
            if servers is None
            else self._of_servers("holdings_of_servers", servers)
        )
        return self._cells(holdings, self._newest_instructions(servers))

    def _cells(self, holdings: list[Row], newest: dict[tuple[str, str], Row]) -> list[StatusCell]:
        installed = {(r["server"], r["package_id"]): r["corrupt"] for r in holdings}
        refs = self.package_refs()  # type: ignore[attr-defined]
        cells = []
        for (server, pid), r in newest.items():
            cells.append(
                StatusCell(
                    refs.get(pid, pid[:12]),
                    pid,
                    server,
                    (server, pid) in installed,
                    _STATES[r["state"]],
                    r["job_id"],
                    r["attempts"],
                    r["last_error"],
                    r["next_attempt_at"],
                    r["bytes_sent"],
                    r["bytes_total"],
                    r["updated_at"],
                    installed.pop((server, pid), None),
                    r["action"],
                    r["error_kind"],
                    r["cancel_cause"],
                )
            )
        for (server, pid), corrupt in installed.items():  # held, and no instruction went
            ref = refs.get(pid, pid[:12])
            cells.append(
                StatusCell(ref, pid, server, True, None, None, 0, None, None, 0, 0, None, corrupt)
            )
        cells.sort(key=lambda c: (c.package_ref, c.server))
        return cells

    def events(
        self, job_id: str | None = None, after_id: int = 0, limit: int | None = None
    ) -> list[EventRecord]:
        """The events after ``after_id``, oldest first; at most ``limit`` of them (a poll
        never reads the whole history into memory to keep a page of it)."""
        most = NO_LIMIT if limit is None else limit
        if job_id is None:
            rows = self.db.rows("events_after", after=after_id, limit=most)
        else:
            rows = self.db.rows("job_events_after", after=after_id, job_id=job_id, limit=most)
        return [event_record(r) for r in rows]

    def recent_events(self, limit: int, job_id: str | None = None) -> list[EventRecord]:
        """The newest ``limit`` events (of one job if given), oldest first."""
        if job_id is None:
            rows = self.db.rows("newest_events", limit=limit)
        else:
            rows = self.db.rows("newest_job_events", limit=limit, job_id=job_id)
        return [event_record(r) for r in reversed(rows)]

    def metrics_totals(self, transfer_bounds: tuple[float, ...]) -> MetricsTotals:
        instructions = {s.value: 0 for s in S}
        for r in self.db.rows("instructions_by_state"):
            instructions[r["state"]] = int(r["n"])
        sums = self.db.row("instruction_sums") or {"attempts": 0, "bytes_sent": 0}
        per_job: dict[str, list[InstructionState]] = {}
        actions: dict[str, str] = {}
        for r in self.db.rows("state_counts_of_every_job"):  # the summary: one row per state
            actions[r["job_id"]] = r["action"]
            if int(r["n"]) > 0:  # a job's state depends only on which states it has
                per_job.setdefault(r["job_id"], []).append(S(r["state"]))
        jobs = {s.value: 0 for s in states.JobState}
        for job_id, action in actions.items():
            jobs[states.job_state(per_job.get(job_id, []), action).value] += 1
        events = {r["kind"]: int(r["n"]) for r in self.db.rows("events_by_kind")}
        # the summary's bins (each install once, under the smallest bound it fits), made
        # cumulative at the bounds asked for
        bins = [
            (float(r["le"]), int(r["n"]), float(r["total"]))
            for r in self.db.rows("transfer_histogram")
        ]
        counts = [sum(n for le, n, _ in bins if le <= float(b)) for b in transfer_bounds]
        return MetricsTotals(
            instructions,
            jobs,
            int(sums["attempts"]),
            int(sums["bytes_sent"]),
            events,
            tuple(transfer_bounds),
            tuple(counts),
            sum(n for _, n, _ in bins),
            sum(total for _, _, total in bins),
        )
