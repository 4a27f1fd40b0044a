"""The store's child sites: registered at the parent, when each last reported, and their
servers, kept as rows of ``servers`` named ``CHILD/SERVER`` (``servers.child`` says whose).

Plain reads and writes by intent, as in :mod:`packdist.store.catalog`; what a report means
(who is online, what each server holds, what wakes) is decided in
:mod:`packdist.service.hierarchy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from packdist.errors import AlreadyExists, NotFound
from packdist.store.db import Database, Row
from packdist.store.records import ChildSiteRecord


@dataclass(frozen=True)
class ChildServerRow:
    name: str  # CHILD/SERVER
    removed: bool
    last_seen: float | None  # on this site's clock
    disk_free: int | None


LAST_SEEN_GRAIN = 2.0  # seconds a reported last heartbeat moves before it is written


class ChildQueries:
    db: Database

    def add_child_site(
        self,
        name: str,
        url: str,
        token_hash: str,
        now: float,
        bandwidth: float | None = None,
        windows: str = "{}",
    ) -> None:
        """Register a child site; AlreadyExists if one has that name."""
        with self.db.transaction():
            if self.db.value("child_site_exists", name=name) is not None:
                raise AlreadyExists(f"child site {name} already exists")
            self.db.run(
                "insert_child_site",
                name=name,
                url=url,
                token_hash=token_hash,
                now=now,
                bandwidth=bandwidth,
                windows=windows,
            )

    def set_child_link(self, name: str, bandwidth: float | None, windows: str) -> None:
        """The limits of the link to a child; NotFound if there is no such child."""
        if not self.db.run("set_child_link", name=name, bandwidth=bandwidth, windows=windows):
            raise NotFound(f"no child site named {name}")

    def child_site_by_token_hash(self, token_hash: str) -> ChildSiteRecord | None:
        row = self.db.row("child_site_by_token", token_hash=token_hash)
        return None if row is None else _child(row)

    def child_site(self, name: str) -> ChildSiteRecord | None:
        row = self.db.row("child_site_named", name=name)
        return None if row is None else _child(row)

    def child_site_names(self) -> list[str]:
        return [str(r["name"]) for r in self.db.rows("child_site_names")]

    def list_child_sites(self) -> list[ChildSiteRecord]:
        return [_child(r) for r in self.db.rows("list_child_sites")]

    def verified_holdings(self) -> dict[str, list[str]]:
        """Per server not removed, the package ids it holds, verified (not found corrupt)."""
        return _by_server(self.db.rows("verified_holdings"))

    def record_child_report(self, name: str, site_name: str, ca: str | None, now: float) -> None:
        self.db.run("record_child_report", name=name, site_name=site_name, ca=ca, now=now)

    def servers_of_child(self, child: str) -> dict[str, ChildServerRow]:
        """The child's servers as kept here, removed ones too, by name."""
        return {
            r["name"]: ChildServerRow(r["name"], bool(r["removed"]), r["last_seen"], r["disk_free"])
            for r in self.db.rows("servers_of_child", child=child)
        }

    def child_holdings(self, child: str) -> dict[str, list[str]]:
        """Per server of the child (not removed), the package ids it holds, verified."""
        return _by_server(self.db.rows("child_holdings", child=child))

    def relayed_unfinished(self, states: list[str]) -> list[Row]:
        return self.db.rows("relayed_unfinished", states=states)

    def child_retries(self, child: str, states: list[str]) -> list[int]:
        return [r["id"] for r in self.db.rows("child_retries", child=child, states=states)]

    def sent_to_child(self, child: str, package_id: str) -> bool:
        return self.db.value("sent_to_child", child=child, package_id=package_id) is not None

    def holds_verified(self, server: str, package_id: str) -> bool:
        """Whether the server holds the package, as last verified (not found corrupt)."""
        return self.db.value("holds_verified", server=server, package_id=package_id) is not None

    def newest_instruction_for(self, package_id: str, server: str, action: str) -> Row | None:
        return self.db.row(
            "newest_instruction_for", package_id=package_id, server=server, action=action
        )

    def child_holdings_all(self, child: str) -> dict[str, list[str]]:
        return _by_server(self.db.rows("child_holdings_all", child=child))

    def put_child_server(
        self,
        name: str,
        child: str,
        url: str,
        last_seen: float | None,
        disk_free: int | None,
        now: float,
        kept: ChildServerRow | None,
    ) -> None:
        """A server of a child as its report says: added, enrolled again (it was removed),
        or its liveness brought up to date (``kept``: the row as it was)."""
        fields = {"name": name, "last_seen": last_seen, "disk_free": disk_free}
        if kept is None:
            self.db.run("insert_child_server", **fields, url=url, child=child, now=now)
        elif kept.removed:
            self.db.run("reenrol_child_server", **fields, url=url, child=child, now=now)
            self.db.run("clear_server_holdings", name=name)
        elif kept.disk_free != disk_free or _moved(kept.last_seen, last_seen):
            self.db.run("update_child_server", **fields)


def _moved(before: float | None, now: float | None) -> bool:
    """Whether a server's last heartbeat, as reported, moved enough to write (to the second
    would rewrite every row of a fleet at every report)."""
    if before is None or now is None:
        return before != now
    return abs(now - before) >= LAST_SEEN_GRAIN


def _by_server(rows: list[Row]) -> dict[str, list[str]]:
    held: dict[str, list[str]] = {}
    for r in rows:
        held.setdefault(r["server"], []).append(r["package_id"])
    return held


def _child(row: Row) -> ChildSiteRecord:
    return ChildSiteRecord(
        name=row["name"],
        url=row["url"],
        created_at=row["created_at"],
        last_seen=row["last_seen"],
        site_name=row["site_name"],
        ca=row["ca"],
        bandwidth=row["bandwidth"],
        windows=row["windows"],
    )
