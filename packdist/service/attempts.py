"""Use cases of the despooler: claim due work under a lease, and settle each attempt.

How an attempt ends decides what comes next, and the rules are here: a verified install or
removal ends the instruction; a failure is retried or given up by its kind and the retry
policy; a superseded attempt that did not succeed is cancelled instead; an attempt whose
worker died (its lease ran out) or stopped (handed back) returns to the queue.
"""

from __future__ import annotations

from typing import Any

from packdist.errors import ErrorKind
from packdist.retry import RetryPolicy
from packdist.service.jobs import JobUseCases, cancelled, ended
from packdist.store.db import Row
from packdist.store.instructions import Plus
from packdist.store.records import ANY_SERVER, Claim

#: kinds of failure that the same attempt again cannot mend: the instruction stops (failed,
#: with the cause) until an operator fixes the cause and retries the job
# a failed health check too: the same version fails it again (a rollout counts it failed)
STOPPING_KINDS = frozenset({ErrorKind.INTEGRITY, ErrorKind.REFUSED, ErrorKind.HEALTH})

LEASE_EXPIRED = "attempt interrupted: its despooler worker stopped or stalled (lease expired)"


class AttemptUseCases(JobUseCases):
    def claim_ready(
        self,
        owner: str,
        lease_seconds: float,
        limit: int,
        now: float,
        heard_since: float | None = None,
        child: str = ANY_SERVER,
    ) -> list[Claim]:
        """Take up to ``limit`` due instructions under the lease ``owner`` (with
        ``heard_since``: only of servers heard from since then; with ``child``: only this
        site's own servers, or only those behind that child site)."""
        store = self.store
        with store.transaction():
            ids = store.claim_candidates(now, limit, heard_since, child)
            claimed = store.apply(
                "claim",
                ids,
                now,
                attempts=Plus(1),
                lease_owner=owner,
                lease_expires_at=now + lease_seconds,
                claimed_at=now,
            )
            claims = store.claims([r["id"] for r in claimed])
            for c in claims:
                store.start_attempt(c.instruction_id, c.attempts, owner, now)
                store.add_event(
                    "attempt", f"attempt {c.attempts} to {c.server}", c.job_id, c.server, now=now
                )
        return claims

    def mark_installed(
        self,
        instruction_id: int,
        owner: str,
        now: float,
        final_bytes: tuple[int, int, int, int] | None = None,
    ) -> None:
        """The agent holds the package, verified: the instruction ends installed, and the
        server's copy is recorded (whatever validation found before is mended).
        ``final_bytes``: the last progress figures (sent, total, from peers, done), written
        with it."""
        store = self.store
        with store.transaction():
            if final_bytes is not None:
                store.renew_lease(instruction_id, owner, now, *final_bytes)
            row = self._done("installed", "install", instruction_id, owner, now)
            package_id = self._package_of(instruction_id)
            store.record_verified_install(row["server"], package_id, now)
            store.end_attempt(instruction_id, "installed", now)
            store.add_event(
                "installed",
                f"installed on {row['server']} (verified)",
                row["job_id"],
                row["server"],
                now=now,
            )

    def mark_removed(self, instruction_id: int, owner: str, now: float) -> None:
        """A removal instruction is done: the agent no longer holds the version (the
        server's copy leaves the matrix at once)."""
        store = self.store
        with store.transaction():
            row = self._done("removed", "remove", instruction_id, owner, now)
            store.drop_holding(row["server"], self._package_of(instruction_id))
            store.end_attempt(instruction_id, "removed", now)
            store.add_event(
                "removed", f"removed from {row['server']}", row["job_id"], row["server"], now=now
            )

    def record_failure(
        self,
        claim: Claim,
        error: str,
        kind: ErrorKind,
        policy: RetryPolicy,
        now: float,
    ) -> bool:
        """A failed attempt: retried, or given up by its kind or the policy's limits.
        Returns True if it will be retried."""
        if kind in STOPPING_KINDS:
            self.mark_failed(claim.instruction_id, claim.lease, error, now, kind)
            return False
        limited = policy.with_limits(claim.max_attempts, claim.deadline)
        decision = limited.decide(claim.attempts - claim.attempts_base, claim.job_created_at, now)
        if decision.retry_at is None:
            self.mark_failed(
                claim.instruction_id, claim.lease, f"{error} ({decision.reason})", now, kind
            )
            return False
        self.schedule_retry(claim.instruction_id, claim.lease, error, decision.retry_at, now, kind)
        return True

    def wait_for_window(self, claim: Claim, words: str, opens_at: float, now: float) -> None:
        """The target is behind a link outside its windows: due again when it opens, past
        the retry policy's limits (waiting for a window is not a failure to count)."""
        self.schedule_retry(claim.instruction_id, claim.lease, words, opens_at, now)

    def schedule_retry(
        self,
        instruction_id: int,
        owner: str,
        error: str,
        retry_at: float,
        now: float,
        kind: ErrorKind = ErrorKind.TRANSIENT,
    ) -> None:
        """Back to ``retrying``, due at ``retry_at``, or at once if the server came back (a
        heartbeat after silence) while this attempt was under way. A superseded attempt is
        cancelled instead: the newer, opposite intent runs next."""
        store = self.store
        with store.transaction():
            current = self._held(instruction_id, owner)
            if current is not None and current["superseded_by"]:
                self._end_superseded(instruction_id, current["superseded_by"], now, owner, error)
                return
            back_at = store.db.value("server_back_at", name=current["server"]) if current else None
            came_back = bool(
                current and back_at is not None and (current["claimed_at"] or 0) < back_at
            )
            (row,) = store.apply(
                "retry",
                [instruction_id],
                now,
                owner=owner,
                strict=True,
                lease_owner=None,
                lease_expires_at=None,
                last_error=error,
                error_kind=kind.value,
                next_attempt_at=now if came_back else retry_at,
            )
            store.end_attempt(instruction_id, "retry", now, kind.value)
            when = (
                "server came back during the attempt: retry now"
                if came_back
                else f"retry in {max(0.0, retry_at - now):.1f}s"
            )
            store.add_event("failure", f"{error}; {when}", row["job_id"], row["server"], now=now)
            if row["superseded_by"]:  # superseded while we settled: the newer intent runs
                self._cancel_superseded_retry(row, now)

    def mark_failed(
        self,
        instruction_id: int,
        owner: str,
        error: str,
        now: float,
        kind: ErrorKind = ErrorKind.TRANSIENT,
    ) -> None:
        store = self.store
        with store.transaction():
            current = self._held(instruction_id, owner)
            if current is not None and current["superseded_by"]:
                self._end_superseded(instruction_id, current["superseded_by"], now, owner, error)
                return
            (row,) = store.apply(
                "fail",
                [instruction_id],
                now,
                owner=owner,
                strict=True,
                error_kind=kind.value,
                **ended(now, error),
            )
            store.end_attempt(instruction_id, "failed", now, kind.value)
            store.add_event("failed", error, row["job_id"], row["server"], now=now)

    def recover_expired_leases(self, now: float) -> int:
        """Return instructions whose worker died or stalled (lease expired) to the queue,
        due at once; a superseded one is cancelled instead."""
        with self.store.transaction():
            rows = self.store.expired_leases(now)
            return self._requeue(
                rows,
                "lease_expired",
                now,
                "lease expired; returned to the queue",
                last_error=LEASE_EXPIRED,
                error_kind=ErrorKind.TRANSIENT.value,
            )

    def release_leases(self, owner: str, now: float) -> int:
        """A worker stopping cleanly hands its instructions back, due at once. Releases the
        leases held as ``owner`` and as ``owner:<anything>`` (one lease name per claim)."""
        with self.store.transaction():
            rows = self.store.leases_of(owner)
            return self._requeue(
                rows, "handed_back", now, "site stopping; attempt handed back to the queue"
            )

    def _requeue(self, rows: list[Row], event: str, now: float, words: str, **sets: Any) -> int:
        """Attempts that ended without an outcome go back to the queue, due at once (a
        superseded one is cancelled). Each is changed only if still held by the lease it was
        found under (and, for an expired one, not renewed since): a worker that renewed or
        re-claimed it meanwhile keeps it. An expired attempt ended when its lease did, so no
        two holders of an instruction ever overlap in the history. Returns how many moved."""
        store = self.store
        expired_before = now if event == "lease_expired" else None
        moved = 0
        for r in rows:
            if r["superseded_by"]:
                moved += self._end_superseded(r["id"], r["superseded_by"], now, r["lease_owner"])
                continue
            changed = store.apply(
                event,
                [r["id"]],
                now,
                owner=r["lease_owner"],
                expired_before=expired_before,
                lease_owner=None,
                lease_expires_at=None,
                next_attempt_at=now,
                **sets,
            )
            for c in changed:
                moved += 1
                ended_at = r.get("lease_expires_at") or now
                store.end_attempt(
                    r["id"], event.replace("_", " "), ended_at, sets.get("error_kind")
                )
                store.add_event("recovered", words, c["job_id"], c["server"], now=now)
                if c["superseded_by"]:
                    self._cancel_superseded_retry(c, now)
        if moved:
            store.notify()
        return moved

    # --- helpers --------------------------------------------------------------------------

    def _done(self, event: str, action: str, instruction_id: int, owner: str, now: float) -> Row:
        """The attempt held by ``owner`` did what its job asks (``installed`` ends only an
        install, ``removed`` only a removal): the instruction ends, its last error cleared."""
        (row,) = self.store.apply(
            event,
            [instruction_id],
            now,
            owner=owner,
            action=action,
            strict=True,
            error_kind=None,
            last_error=None,
            **ended(now, None),
        )
        return row

    def _package_of(self, instruction_id: int) -> str:
        row = self.store.instruction(instruction_id)
        assert row is not None
        return str(row["package_id"])

    def _held(self, instruction_id: int, owner: str) -> dict[str, object] | None:
        """The instruction, if ``owner`` holds it (else the guarded change refuses)."""
        row = self.store.instruction(instruction_id)
        if row is None or row["lease_owner"] != owner or row["state"] != "sending":
            return None
        return dict(row)

    def _end_superseded(
        self,
        instruction_id: int,
        superseding_job: object,
        now: float,
        owner: str | None = None,
        cause: str | None = None,
    ) -> int:
        """An attempt that a newer, opposite job superseded did not succeed: cancelled, not
        retried; its own failure stays on the timeline. Returns 1 if it was still held."""
        store = self.store
        why = self.superseded_why(str(superseding_job))
        changed = store.apply(
            "supersede_ended", [instruction_id], now, owner=owner, **cancelled(now, why)
        )
        for r in changed:
            store.end_attempt(instruction_id, "superseded", now)
            if cause:
                message = f"{cause}; {why}: not retried"
                store.add_event("failure", message, r["job_id"], r["server"], now=now)
            store.add_event("cancelled", why, r["job_id"], r["server"], now=now)
        store.notify()
        return len(changed)

    def _cancel_superseded_retry(self, row: Row, now: float) -> None:
        """A retry that a newer, opposite job superseded while it was being recorded (on
        PostgreSQL the two can cross): cancelled, so only the newest intent runs."""
        store = self.store
        why = self.superseded_why(str(row["superseded_by"]))
        for r in store.apply("supersede", [row["id"]], now, **cancelled(now, why)):
            store.add_event("cancelled", why, r["job_id"], r["server"], now=now)
