"""Use cases of active versions: activate a version on servers, roll a package back to the
version active before, and what the site knows of each server's active versions.

An activation is an install job with the ``activate`` flag: each instruction installs the
version (nothing crosses the network when the server holds it already, verified), then has
the agent switch ``packages/NAME/current`` to it, and ends ``installed`` only once the agent
confirmed the switch. So activation has the same leases, retries, failure kinds and
never-lose-a-target guarantees as any install. A rollback is one such job per version to go
back to (servers may have had different versions before).
"""

from __future__ import annotations

from dataclasses import dataclass

from packdist.core.words import counted
from packdist.errors import NoTargets, NotFound, UserError
from packdist.service.hierarchy import HierarchyUseCases

ACTIVATE = "activate"  # the job option: install, then make it the active version
HEALTH_CHECK = "health_check"  # job option: a program of the package the agent runs in the
#                                 installed tree before the switch ([path, args...])
HEALTH_TIMEOUT = "health_timeout"  # job option: seconds the health check may take
DEFAULT_HEALTH_TIMEOUT = 60.0


@dataclass(frozen=True)
class Rollback:
    """The jobs of a rollback, and the servers it left alone (with why)."""

    jobs: list[tuple[str, str, list[str]]]  # (job id, NAME@VERSION, servers)
    skipped: dict[str, str]  # server: why it is not rolled back


class ActivationUseCases(HierarchyUseCases):
    def activate(
        self,
        package_id: str,
        servers: list[str],
        now: float,
        max_attempts: int | None = None,
        deadline: float | None = None,
    ) -> str:
        """A job that installs the version where it is missing and makes it active."""
        self.refuse_behind_child(servers)
        return self.add_job(package_id, servers, max_attempts, deadline, {ACTIVATE: True}, now)

    @staticmethod
    def refuse_behind_child(servers: list[str]) -> None:
        behind = [s for s in servers if "/" in s]  # CHILD/SERVER: this site's own have no "/"
        if behind:
            raise UserError(
                f"activation behind a child site is not supported yet: {', '.join(behind[:5])}"
                + (f" and {len(behind) - 5} more" if len(behind) > 5 else "")
            )

    def rollback(self, name: str, servers: list[str], now: float) -> Rollback:
        """Make the version active before the current one active again on each server: a
        job per version to go back to. A server with no earlier active version is left
        alone (``skipped``); NoTargets if that is every one."""
        store = self.store
        with store.transaction():
            if not any(p.name == name for p in store.list_packages()):
                raise NotFound(f"no package named {name}")
            active = store.active_on(name, servers)
            back: dict[str, list[str]] = {}
            skipped: dict[str, str] = {}
            for server in servers:
                row = active.get(server)
                if row is None:
                    skipped[server] = f"no version of {name} is active there"
                elif row.previous_id is None:
                    skipped[server] = f"no earlier version of {name} was active there"
                else:
                    back.setdefault(row.previous_id, []).append(server)
            if not back:
                words = "; ".join(f"{s}: {why}" for s, why in list(skipped.items())[:3])
                raise NoTargets(f"nothing to roll back ({words})")
            jobs = []
            for package_id, targets in back.items():
                pkg = store.package_by_id(package_id)
                assert pkg is not None  # server_active refers to packages
                job_id = self.activate(package_id, targets, now)
                store.add_event(
                    "job",
                    f"rollback of {name} to {pkg.version} on {counted(len(targets), 'server')}{self._by()}",
                    job_id,
                    now=now,
                    actor=self.actor,
                )
                jobs.append((job_id, pkg.ref, targets))
        return Rollback(jobs, skipped)

    def mark_activated(
        self,
        instruction_id: int,
        owner: str,
        now: float,
        final_bytes: tuple[int, int, int, int] | None = None,
    ) -> None:
        """An activation's instruction is done: the version is installed, verified, and the
        agent confirmed it active. Both recorded in one transaction."""
        store = self.store
        with store.transaction():
            self.mark_installed(instruction_id, owner, now, final_bytes)
            row = store.instruction(instruction_id)
            assert row is not None
            server, job_id = str(row["server"]), str(row["job_id"])
            # the package from the instruction's row: not the whole job with its
            # instructions (thousands), once per server
            words = self.record_active(server, str(row["package_id"]), now)
            if words is not None:
                store.add_event("active", words, job_id, server, now=now)
