"""The store's active versions: which version of each package is active on each server
(``packages/NAME/current`` there) and which was active before it, for a rollback.

Plain reads and writes by intent, as in :mod:`packdist.store.catalog`; when a version counts
as active (an activation the agent confirmed, a heartbeat after a restart) is decided in
:mod:`packdist.service.activation`.
"""

from __future__ import annotations

from dataclasses import dataclass

from packdist.store.db import Database, Row


@dataclass(frozen=True)
class ActiveVersion:
    server: str
    name: str  # the package's name
    package_id: str  # the version active now
    previous_id: str | None  # the one active before it (None: none was, as far as known)
    since: float


class ActivationQueries:
    db: Database

    def active_versions(self, server: str) -> dict[str, ActiveVersion]:
        """The server's active versions, by package name."""
        rows = self.db.rows("active_of_server", server=server)
        return {r["name"]: _active(r) for r in rows}

    def active_on(self, name: str, servers: list[str]) -> dict[str, ActiveVersion]:
        """The active version of package ``name`` on each of ``servers`` that has one."""
        rows = self.db.rows("active_of_package", name=name, servers=servers)
        return {r["server"]: _active(r) for r in rows}

    def set_active(self, server: str, name: str, package_id: str, now: float) -> bool:
        """Record ``package_id`` as the server's active version of ``name``; the one
        active until now becomes its previous. False if it was active already."""
        with self.db.transaction():
            if self.db.run(
                "switch_active", server=server, name=name, package_id=package_id, now=now
            ):
                return True
            if self.db.value("active_exists", server=server, name=name) is not None:
                return False
            self.db.run("insert_active", server=server, name=name, package_id=package_id, now=now)
            return True


def _active(r: Row) -> ActiveVersion:
    previous = r["previous_id"]
    return ActiveVersion(
        server=str(r["server"]),
        name=str(r["name"]),
        package_id=str(r["package_id"]),
        previous_id=None if previous is None else str(previous),
        since=float(r["since"]),
    )
