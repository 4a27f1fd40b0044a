"""Jobs, instructions and attempts in the store, with the one writer of instruction state.

:meth:`InstructionQueries.apply` is the only code that changes an instruction's state: it
takes an event of :data:`packdist.states.TRANSITIONS`, refuses a column the event may not set
(:data:`packdist.states.EFFECTS`), and runs the one guarded ``transition`` statement
(``… WHERE state IN (the event's sources)``). Which instructions an event applies to, and why,
is decided above, in :mod:`packdist.service`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from packdist import states
from packdist.errors import InvalidTransition
from packdist.states import InstructionState
from packdist.store.db import Database, Row
from packdist.store.records import ANY_SERVER, Claim, InstructionRecord

S = InstructionState
_STATE = {s.value: s for s in S}  # faster than the enum's own lookup, for 10,000 rows


@dataclass(frozen=True)
class Plus:
    """A column set to its own value plus ``n`` (``attempts`` at a claim)."""

    n: int = 1


@dataclass(frozen=True)
class CopyOf:
    """A column set to another column's value (``attempts_base`` at an operator retry)."""

    column: str


def _states(values: Iterable[InstructionState]) -> list[str]:
    return sorted(s.value for s in values)


def instruction_record(row: Row) -> InstructionRecord:
    return InstructionRecord(
        id=row["id"],
        job_id=row["job_id"],
        server=row["server"],
        state=_STATE[row["state"]],
        attempts=row["attempts"],
        last_error=row["last_error"],
        next_attempt_at=row["next_attempt_at"],
        bytes_sent=row["bytes_sent"],
        bytes_total=row["bytes_total"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        bytes_from_peers=row["bytes_from_peers"],
        bytes_done=row["bytes_done"],
        error_kind=row["error_kind"],
        phase=row["phase"],
        cancel_cause=row["cancel_cause"],
    )


class InstructionQueries:
    db: Database

    # --- the one writer of state -----------------------------------------------------------

    def apply(
        self,
        event: str,
        ids: Sequence[int],
        now: float,
        *,
        owner: str | None = None,
        action: str | None = None,
        expired_before: float | None = None,
        strict: bool = False,
        **sets: Any,
    ) -> list[Row]:
        """Apply ``event`` to the instructions ``ids`` that are in one of its source states
        (and, given ``owner``, leased by it; given ``action``, of a job with that action;
        given ``expired_before``, whose lease ran out before then). Returns ``id``,
        ``job_id``, ``server`` and ``superseded_by`` of each instruction changed. ``strict``:
        raise :class:`InvalidTransition` unless every one of ``ids`` changed."""
        allowed = states.EFFECTS[event]
        refused = set(sets) - allowed
        if refused:
            raise ValueError(f"event {event} may not set {', '.join(sorted(refused))}")
        if states.target(event) is InstructionState.CANCELLED and not sets.get("cancel_cause"):
            raise ValueError(f"event {event} cancels: it must say what cancelled it (cancel_cause)")
        if not ids:
            return []
        params: dict[str, Any] = {
            "to_state": states.target(event).value,
            "now": now,
            "ids": list(ids),
            "from_states": _states(states.sources(event)),
        }
        assignments = []
        for column, value in sorted(sets.items()):
            if isinstance(value, Plus):
                assignments.append(f", {column} = {column} + {int(value.n)}")
            elif isinstance(value, CopyOf):
                if value.column not in ("attempts",):
                    raise ValueError(f"cannot copy column {value.column}")
                assignments.append(f", {column} = {value.column}")
            else:
                assignments.append(f", {column} = :set_{column}")
                params[f"set_{column}"] = value
        guards = ""
        if owner is not None:
            guards += " AND lease_owner = :owner"
            params["owner"] = owner
        if action is not None:  # "installed" only ends an install, "removed" a removal
            guards += " AND job_id IN (SELECT id FROM jobs WHERE action = :action)"
            params["action"] = action
        if expired_before is not None:  # a lease renewed meanwhile is live: leave it
            guards += " AND lease_expires_at < :expired_before"
            params["expired_before"] = expired_before
        sql = self.db.sql("transition", assignments="".join(assignments), guards=guards)
        changed = self.db.rows_of(sql, params)
        if strict and len(changed) != len(set(ids)):
            missed = sorted(set(ids) - {r["id"] for r in changed})
            state = self.db.value("instruction_state", id=missed[0]) or "missing"
            raise InvalidTransition(f"instruction {missed[0]}: cannot {event} from state {state}")
        return changed

    # --- jobs -----------------------------------------------------------------------------

    def insert_job(
        self,
        job_id: str,
        package_id: str,
        servers: list[str],
        bytes_total: int,
        max_attempts: int | None,
        deadline: float | None,
        options: dict[str, Any],
        action: str,
        now: float,
    ) -> None:
        """A job and its instructions, one per server, each in the initial state: the newest
        of their (server, package) now. The triggers of the schema count them."""
        self.db.run(
            "insert_job",
            id=job_id,
            package_id=package_id,
            now=now,
            max_attempts=max_attempts,
            deadline=deadline,
            options=json.dumps(options),
            action=action,
        )
        self.db.run_many(
            "insert_instruction",
            [
                {
                    "job_id": job_id,
                    "server": s,
                    "state": states.INITIAL.value,
                    "now": now,
                    "bytes_total": bytes_total,
                }
                for s in servers
            ],
        )
        self.db.run("record_newest_instructions", job_id=job_id, package_id=package_id)

    # --- finding instructions ---------------------------------------------------------------

    def instruction(self, instruction_id: int) -> Row | None:
        """An instruction with its job's action and package (``superseded_by`` too)."""
        return self.db.row("instruction_by_id", id=instruction_id)

    def job_instructions(
        self, job_id: str, in_states: frozenset[InstructionState], live_servers: bool = False
    ) -> list[Row]:
        """``id`` and ``server`` of a job's instructions in these states (of servers not
        removed, if ``live_servers``)."""
        name = "job_instructions_in_live" if live_servers else "job_instructions_in"
        return self.db.rows(name, job_id=job_id, states=_states(in_states))

    def server_instructions(self, server: str, in_states: frozenset[InstructionState]) -> list[int]:
        return [
            r["id"]
            for r in self.db.rows(
                "server_instructions_in", server=server, states=_states(in_states)
            )
        ]

    def waiting_retries(self, server: str, now: float) -> list[int]:
        """A server's retrying instructions that still wait out a back-off at ``now``."""
        rows = self.db.rows(
            "server_waiting_retries", server=server, states=_states({S.RETRYING}), now=now
        )
        return [r["id"] for r in rows]

    def unfinished_of_package(
        self,
        package_id: str,
        servers: list[str],
        action: str,
        in_states: frozenset[InstructionState],
    ) -> list[Row]:
        """``id``, ``state``, ``job_id``, ``server`` and the job's ``options`` of the
        instructions of ``action`` jobs for this package on these servers."""
        return self.db.rows(
            "unfinished_of_package",
            package_id=package_id,
            action=action,
            servers=servers,
            states=_states(in_states),
        )

    def mark_superseded_by(self, ids: list[int], job_id: str) -> None:
        """The attempts under way of ``ids`` end first; a failure then cancels them."""
        if ids:
            self.db.run("mark_superseded_by", ids=ids, job_id=job_id)

    def job_action(self, job_id: str) -> str | None:
        return self.db.value("superseding_job", id=job_id)  # type: ignore[no-any-return]

    # --- the despooler's queries ------------------------------------------------------------

    def next_due_at(self) -> float | None:
        due = self.db.value("next_due_at", states=_states(states.sources("claim")))
        return float(due) if due is not None else None

    def claim_candidates(
        self, now: float, limit: int, heard_since: float | None = None, child: str = ANY_SERVER
    ) -> list[int]:
        """Due instructions, oldest due first, that no opposite attempt on their server
        waits for (with ``heard_since``: only of servers heard from since then; ``child``:
        :data:`ANY_SERVER`, :data:`OWN_SERVERS` or one child site's name); on PostgreSQL
        locked for this transaction, skipping those another worker is claiming.

        One query per source state: each walks the ``(state, next_attempt_at)`` index in
        order and stops at ``limit``, where one query over both states sorted every due
        row (10,000 of them: 20 ms per claim)."""
        found: list[tuple[float, int]] = []
        for state in sorted(states.sources("claim")):
            rows = self.db.rows(
                "claim_candidates",
                state=state.value,
                now=now,
                limit=limit,
                heard_since=-1.0 if heard_since is None else heard_since,
                child=child,
            )
            found += [(float(r["next_attempt_at"]), int(r["id"])) for r in rows]
        return [i for _, i in sorted(found)[:limit]]

    def installs_under_way(self, server: str, package_id: str) -> int:
        """Install attempts of this package on this server that a worker drives now."""
        return int(self.db.value("installs_under_way", server=server, package_id=package_id))

    def claims(self, ids: list[int]) -> list[Claim]:
        rows = self.db.rows("claim_details", ids=ids)
        return [
            Claim(
                instruction_id=r["id"],
                job_id=r["job_id"],
                server=r["server"],
                server_url=r["url"],
                package_id=r["package_id"],
                package_ref=f"{r['name']}@{r['version']}",
                attempts=r["attempts"],
                attempts_base=r["attempts_base"],
                job_created_at=r["created_at"],
                max_attempts=r["max_attempts"],
                deadline=r["deadline"],
                lease=r["lease_owner"] or "",
                # a copy known corrupt is repaired by any install job, not taken as installed
                options={
                    **json.loads(r["options"] or "{}"),
                    **({"repair": True} if r["corrupt"] and r["action"] == "install" else {}),
                },
                action=r["action"],
                server_last_seen=r["server_last_seen"],
            )
            for r in rows
        ]

    def renew_lease(
        self,
        instruction_id: int,
        owner: str,
        until: float,
        bytes_sent: int,
        bytes_total: int,
        bytes_from_peers: int = 0,
        bytes_done: int = 0,
        phase: str | None = None,
    ) -> bool:
        """Extend a held lease and record progress (``bytes_sent``: all bytes the server
        received on the wire, ``bytes_from_peers`` of them from peers; ``bytes_done``: how
        much of the package it holds so far; ``phase``: where the attempt is, in the target's
        words); False if the worker lost the lease
        (cancelled, expired). The state is not touched."""
        with self.db.transaction():
            changed = self.db.run(
                "renew_lease",
                id=instruction_id,
                owner=owner,
                until=until,
                bytes_sent=bytes_sent,
                bytes_total=bytes_total,
                bytes_from_peers=bytes_from_peers,
                bytes_done=bytes_done,
                phase=phase,
            )
        return changed > 0

    def expired_leases(self, now: float) -> list[Row]:
        """``id``, ``superseded_by``, ``lease_expires_at`` and ``lease_owner`` of attempts
        whose lease ran out."""
        return self.db.rows("expired_leases", now=now)

    def leases_of(self, owner: str) -> list[Row]:
        """``id``, ``superseded_by`` and ``lease_owner`` of the attempts held as ``owner`` or
        ``owner:<any>``."""
        prefix = owner.replace("!", "!!").replace("%", "!%").replace("_", "!_") + ":%"
        return self.db.rows("leases_of_owner", owner=owner, prefix=prefix)

    # --- the history of attempts ------------------------------------------------------------

    def start_attempt(self, instruction_id: int, attempt: int, owner: str, now: float) -> None:
        self.db.run("start_attempt", id=instruction_id, attempt=attempt, owner=owner, now=now)

    def end_attempt(
        self, instruction_id: int, outcome: str, now: float, error_kind: str | None = None
    ) -> None:
        self.db.run(
            "end_attempt", id=instruction_id, now=now, outcome=outcome, error_kind=error_kind
        )

    def attempt_history(self) -> list[Row]:
        """Every attempt: ``instruction_id``, ``attempt``, ``lease_owner``, ``claimed_at``,
        ``ended_at``, ``outcome``, ``error_kind``."""
        return self.db.rows("attempt_history")

    # --- events -----------------------------------------------------------------------------

    def add_event(
        self,
        kind: str,
        message: str,
        job_id: str | None = None,
        server: str | None = None,
        now: float = 0.0,
        actor: str | None = None,
    ) -> None:
        self.db.run(
            "insert_event",
            at=now,
            job_id=job_id,
            server=server,
            kind=kind,
            message=message,
            actor=actor,
        )
