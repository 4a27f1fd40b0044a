"""Use cases of a site hierarchy, at the parent: child sites registered, their reports taken,
and what the parent knows of each child's servers.

A child site reports every few seconds (:mod:`packdist.protocol.hierarchy`); the parent
keeps the last report whole and reads it here. A child's server is online at the parent
while the child is (its reports arrive) and the child says so; its ``last_seen`` is put on
the parent's clock (the report says how long ago, not when), so clocks that differ between
sites do not make a server look stale or ahead.

Not yet: packages do not cross to child sites (the sender); a job cannot target a child's
servers, and ``distribute`` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from packdist.errors import UserError
from packdist.protocol.hierarchy import ChildReport
from packdist.service.fleet import FleetUseCases
from packdist.store.records import ChildSiteRecord

#: seconds between two reports of a child (the parent's answer says so; the child obeys)
REPORT_INTERVAL = 3.0
#: a child not heard from for this long is offline, and so are its servers, whatever its
#: last report said (three reports missed, and one more for a slow link)
CHILD_OFFLINE_AFTER = 4 * REPORT_INTERVAL


@dataclass(frozen=True)
class ChildServerView:
    name: str  # as the parent names it: CHILD/SERVER, CHILD/GRANDCHILD/SERVER
    online: bool
    last_seen: float | None  # on the parent's clock
    disk_free: int | None
    installed: tuple[str, ...]  # package ids

    def to_json(self, refs: dict[str, str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "online": self.online,
            "last_seen": self.last_seen,
            "disk_free": self.disk_free,
            "packages": sorted(refs.get(i, i[:12]) for i in self.installed),
        }


@dataclass(frozen=True)
class ChildSiteView:
    name: str
    url: str
    site_name: str | None  # what the child calls itself
    created_at: float
    last_seen: float | None
    online: bool
    servers: tuple[ChildServerView, ...]

    @property
    def state(self) -> str:
        if self.last_seen is None:
            return "never reported"
        return "online" if self.online else "offline"

    def to_json(self, refs: dict[str, str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "site": self.site_name,
            "state": self.state,
            "online": self.online,
            "created_at": self.created_at,
            "last_seen": self.last_seen,
            "servers": [s.to_json(refs) for s in self.servers],
        }


def child_view(child: ChildSiteRecord, now: float) -> ChildSiteView:
    """What the parent knows of one child, from its last report."""
    online = child.last_seen is not None and now - child.last_seen < CHILD_OFFLINE_AFTER
    servers: list[ChildServerView] = []
    if child.last_seen is not None:
        try:
            report = ChildReport.from_json(json.loads(child.report))
        except (ValueError, UserError):  # checked when taken; a damaged row shows none
            report = ChildReport(child.site_name or child.name, ())
        for s in report.servers:
            seen = None if s.seen_ago is None else child.last_seen - s.seen_ago
            servers.append(
                ChildServerView(
                    f"{child.name}/{s.name}", online and s.online, seen, s.disk_free, s.installed
                )
            )
    return ChildSiteView(
        child.name,
        child.url,
        child.site_name,
        child.created_at,
        child.last_seen,
        online,
        tuple(servers),
    )


class HierarchyUseCases(FleetUseCases):
    def add_child(self, name: str, url: str, token_hash: str, now: float) -> None:
        store = self.store
        with store.transaction():
            store.add_child_site(name, url, token_hash, now)
            message = f"child site {name} added ({url}){self._by()}"
            store.add_event("child", message, now=now, actor=self.actor)

    def record_child_report(self, child: ChildSiteRecord, report: ChildReport, now: float) -> None:
        """Keep a child's report whole; an event when it reports for the first time, or
        again after it was offline."""
        store = self.store
        with store.transaction():
            body = json.dumps(report.to_json(), separators=(",", ":"))
            store.record_child_report(child.name, report.site, body, now)
            n = len(report.servers)
            held = f"{n} server{'' if n == 1 else 's'}"
            if child.last_seen is None:
                message = (
                    f"child site {child.name} ({report.site}) reported for the first time: {held}"
                )
                store.add_event("child", message, now=now)
            elif now - child.last_seen >= CHILD_OFFLINE_AFTER:
                gone = round(now - child.last_seen)
                message = f"child site {child.name} is back after {gone}s: {held}"
                store.add_event("child", message, now=now)

    def child_sites(self, now: float) -> list[ChildSiteView]:
        return [child_view(c, now) for c in self.store.list_child_sites()]
