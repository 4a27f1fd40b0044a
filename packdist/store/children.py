"""The store's child sites: registered at the parent, and what each last reported.

Plain reads and writes by intent, as in :mod:`packdist.store.catalog`; what a report means
(who is online, what each server holds) is read by :mod:`packdist.service.hierarchy`.
"""

from __future__ import annotations

from packdist.errors import AlreadyExists
from packdist.store.db import Database, Row
from packdist.store.records import ChildSiteRecord


class ChildQueries:
    db: Database

    def add_child_site(self, name: str, url: str, token_hash: str, now: float) -> None:
        """Register a child site; AlreadyExists if one has that name."""
        with self.db.transaction():
            if self.db.value("child_site_exists", name=name) is not None:
                raise AlreadyExists(f"child site {name} already exists")
            self.db.run("insert_child_site", name=name, url=url, token_hash=token_hash, now=now)

    def child_site_by_token_hash(self, token_hash: str) -> ChildSiteRecord | None:
        row = self.db.row("child_site_by_token", token_hash=token_hash)
        return None if row is None else _child(row)

    def list_child_sites(self) -> list[ChildSiteRecord]:
        return [_child(r) for r in self.db.rows("list_child_sites")]

    def verified_holdings(self) -> dict[str, list[str]]:
        """Per server not removed, the package ids it holds, verified (not found corrupt)."""
        held: dict[str, list[str]] = {}
        for r in self.db.rows("verified_holdings"):
            held.setdefault(r["server"], []).append(r["package_id"])
        return held

    def record_child_report(self, name: str, site_name: str, report: str, now: float) -> None:
        self.db.run("record_child_report", name=name, site_name=site_name, report=report, now=now)


def _child(row: Row) -> ChildSiteRecord:
    return ChildSiteRecord(
        name=row["name"],
        url=row["url"],
        created_at=row["created_at"],
        last_seen=row["last_seen"],
        site_name=row["site_name"],
        report=row["report"],
    )
