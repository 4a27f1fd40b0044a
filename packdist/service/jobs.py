"""Use cases of jobs: distribute, remove, supersede, cancel and retry.

A new job supersedes the opposite unfinished work for the same package on the same servers
(the newest intent wins, the older one never runs after it); an operator's retry of a job
makes it the newest intent again. Every change of state is an event of
:data:`packdist.states.TRANSITIONS`, applied by the store's one writer.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from packdist import states
from packdist.core.words import counted
from packdist.errors import NoTargets, NotFound
from packdist.states import InstructionState
from packdist.store.core import Store
from packdist.store.instructions import CopyOf

S = InstructionState
UNFINISHED = frozenset({S.PENDING, S.SENDING, S.RETRYING})
NOT_STARTED = states.sources("supersede")  # pending or retrying: cancelled at once


def _noun(action: str) -> str:
    return "removal" if action == "remove" else "install"


class JobUseCases:
    """The jobs' use cases on one store; the base of :class:`~packdist.service.Service`."""

    def __init__(self, store: Store, actor: str | None = None) -> None:
        self.store = store
        self.actor = actor  # the operator whose actions these are (None: the site's own)

    def _by(self) -> str:
        """`` by NAME`` for the words of an operator's event ("" for the site's own)."""
        return f" by {self.actor}" if self.actor else ""

    def add_job(
        self,
        package_id: str,
        servers: list[str],
        max_attempts: int | None,
        deadline: float | None,
        options: dict[str, Any],
        now: float,
        action: str = "install",
    ) -> str:
        """Create a job and its instructions (one per server) in one transaction.

        ``action``: ``install`` (the default) or ``remove``. Supersedes the opposite
        unfinished work (:meth:`supersede`). Refuses an empty target list (``NoTargets``),
        an unknown package or server (``NotFound``)."""
        if action not in states.DONE:
            raise ValueError(f"unknown job action {action!r}")
        targets = list(dict.fromkeys(servers))
        if not targets:
            raise NoTargets("a job needs at least one target server")
        store = self.store
        with store.transaction():
            pkg = store.package_by_id(package_id)
            if pkg is None:
                raise NotFound(f"no package with id {package_id[:12]}…")
            known = store.live_server_names(targets)
            unknown = [s for s in targets if s not in known]
            if unknown:
                raise NotFound(f"unknown server(s): {', '.join(unknown)}")
            job_id = secrets.token_hex(6)
            self.supersede(package_id, targets, action, job_id, now)
            size = pkg.size if action == "install" else 0  # a removal moves no package bytes
            store.insert_job(
                job_id, package_id, targets, size, max_attempts, deadline, options, action, now
            )
            what = f"{pkg.ref} to" if action == "install" else f"remove {pkg.ref} from"
            message = f"job created: {what} {named(targets)}{self._by()}"
            store.add_event("created", message, job_id, now=now, actor=self.actor)
            store.notify()
        return job_id

    def distribute(
        self,
        package_id: str,
        servers: list[str],
        now: float,
        max_attempts: int | None = None,
        deadline: float | None = None,
        options: dict[str, Any] | None = None,
    ) -> str:
        """An install job: the package onto every one of ``servers``."""
        return self.add_job(package_id, servers, max_attempts, deadline, options or {}, now)

    def remove(
        self,
        package_id: str,
        servers: list[str],
        now: float,
        max_attempts: int | None = None,
        deadline: float | None = None,
    ) -> str:
        """A removal job: the package off every one of ``servers``."""
        return self.add_job(package_id, servers, max_attempts, deadline, {}, now, "remove")

    def supersede(
        self, package_id: str, servers: list[str], action: str, job_id: str, now: float
    ) -> None:
        """Cancel the opposite unfinished work for this package on these servers.

        An opposite attempt already under way ('sending': the agent is doing it) runs to
        its end, and the newer instruction is not claimed until it has (``claim_ready``):
        the two never cross on the agent. If that attempt does not succeed, it is
        cancelled, not retried (``supersede_ended``)."""
        store = self.store
        opposite = "install" if action == "remove" else "remove"
        why = f"superseded by {_noun(action)} job {job_id}"
        found = store.unfinished_of_package(package_id, servers, opposite, UNFINISHED)
        waiting = [r["id"] for r in found if S(r["state"]) in NOT_STARTED]
        for r in store.apply("supersede", waiting, now, **cancelled(now, why)):
            store.add_event("cancelled", why, r["job_id"], r["server"], now=now)
        under_way = [r for r in found if S(r["state"]) is S.SENDING]
        store.mark_superseded_by([r["id"] for r in under_way], job_id)
        for r in under_way:
            message = f"{why}; the attempt under way ends first"
            store.add_event("superseded", message, r["job_id"], r["server"], now=now)

    def superseded_why(self, superseding_job: str) -> str:
        action = self.store.job_action(superseding_job) or "install"
        return f"superseded by {_noun(action)} job {superseding_job}"

    def cancel_job(self, job_id: str, now: float) -> int:
        """Cancel every unfinished instruction of a job; an attempt under way loses its
        lease, and its worker tells the agent to stop."""
        store = self.store
        with store.transaction():
            store.get_job(job_id)
            ids = [r["id"] for r in store.job_instructions(job_id, states.sources("cancel"))]
            cause = "cancelled by operator" + (f" {self.actor}" if self.actor else "")
            n = len(store.apply("cancel", ids, now, **cancelled(now, cause, keep_error=True)))
            message = f"job cancelled ({counted(n, 'instruction')}){self._by()}"
            store.add_event("cancelled", message, job_id, now=now, actor=self.actor)
        return n

    def retry_job(self, job_id: str, now: float) -> int:
        """Revive a job's failed and cancelled instructions (of servers still enrolled) and
        make its waiting retries due now."""
        store = self.store
        with store.transaction():
            job = store.get_job(job_id)
            # a removed server's instruction would stay pending forever: leave it
            rows = store.job_instructions(
                job_id, states.sources("operator_retry"), live_servers=True
            )
            revived = store.apply(
                "operator_retry",
                [r["id"] for r in rows],
                now,
                next_attempt_at=now,
                finished_at=None,
                attempts_base=CopyOf("attempts"),
                superseded_by=None,  # the retried intent is the newest now
                cancel_cause=None,
            )
            servers = sorted(r["server"] for r in revived)
            if servers:  # the retried intent is now the newest: it supersedes the opposite
                self.supersede(job.package_id, servers, job.action, job_id, now)
            waiting = [r["id"] for r in store.job_instructions(job_id, states.sources("wake"))]
            n = len(revived) + len(store.apply("wake", waiting, now, next_attempt_at=now))
            message = f"operator retry ({counted(n, 'instruction')}){self._by()}"
            store.add_event("retry", message, job_id, now=now, actor=self.actor)
            store.notify()
        return n

    def repairs_under_way(self, server: str, package_id: str) -> str | None:
        """The job of an unfinished repair of this copy, if there is one."""
        for r in self.store.unfinished_of_package(package_id, [server], "install", UNFINISHED):
            if json.loads(r["options"] or "{}").get("repair"):
                return str(r["job_id"])
        return None


HANDFUL = 5  # servers an event names one by one; more are counted


def named(servers: list[str]) -> str:
    """``dp1, dp2``, or, for more than a handful, ``10,000 servers (dp1, dp2, dp3 and 9,997
    more)``: an event of a job to the whole fleet stays one line."""
    if len(servers) <= HANDFUL:
        return ", ".join(servers)
    return f"{len(servers):,} servers ({', '.join(servers[:3])} and {len(servers) - 3:,} more)"


def ended(now: float, why: str | None) -> dict[str, Any]:
    """The columns of an instruction that ends now (its lease dropped), and why (None: the
    last error stays as it was)."""
    columns: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "finished_at": now}
    if why is not None:
        columns["last_error"] = why
    return columns


def cancelled(now: float, cause: str, keep_error: bool = False) -> dict[str, Any]:
    """The columns of an instruction cancelled now, and what cancelled it, in words, kept
    as its ``cancel_cause``; ``keep_error``: its last error stays the failure before (an
    operator's cancel), else the cause is its last error too."""
    return {**ended(now, None if keep_error else cause), "cancel_cause": cause}
