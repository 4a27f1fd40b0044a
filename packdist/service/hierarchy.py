"""Use cases of a site hierarchy, at the parent: child sites registered, their reports taken,
and what the parent knows of each child's servers.

A child site reports every few seconds (:mod:`packdist.protocol.hierarchy`). Its servers
are kept here as rows of ``servers`` named ``CHILD/SERVER`` (a grandchild's
``CHILD/GRANDCHILD/SERVER``), so a job's instructions name them like any other; their
``last_seen`` is put on the parent's clock (a report says how long ago, not when), so clocks
that differ between sites do not make a server look stale or ahead. A child's server is
online here while the child is (its reports arrive) and its child judges it online (or,
for a child that does not say, heard from it lately).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from packdist.config_values import format_rate
from packdist.core.schedule import Schedule
from packdist.core.words import counted
from packdist.protocol.hierarchy import ChildReport, ReportedServer
from packdist.service.fleet import FleetUseCases
from packdist.service.jobs import UNFINISHED, cancelled
from packdist.states import InstructionState
from packdist.store.children import ChildServerRow
from packdist.store.records import ChildSiteRecord

ALWAYS = Schedule()  # a link with no windows

#: seconds between two reports of a child (the parent's answer says so; the child obeys)
REPORT_INTERVAL = 3.0
#: a child not heard from for this long is offline, and so are its servers, whatever its
#: last report said (three reports missed, and one more for a slow link)
CHILD_OFFLINE_AFTER = 4 * REPORT_INTERVAL
#: a child's server heard from (by its child) longer ago than this is offline here: a site's
#: own bound for a small fleet (15 s) and the age of a report
SERVER_ONLINE_AFTER = 15.0 + REPORT_INTERVAL
#: a server whose last heartbeat (as its child reports it) jumps forward by more than this
#: was silent in between: it is back, and its retrying work here wakes
SILENCE = 10.0


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
    bandwidth: float | None = None
    schedule: Schedule = ALWAYS

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
            "bandwidth": self.bandwidth,
            "windows": self.schedule.text(),
            "servers": [s.to_json(refs) for s in self.servers],
        }


def _heard_ago(s: ReportedServer) -> float:
    """How long ago the server counts as heard from here. One its child judges online (the
    child knows its own fleet's heartbeat pace, which grows with the fleet) counts as heard
    as of the report, so a large child's servers stay online here between their heartbeats."""
    assert s.seen_ago is not None
    return min(s.seen_ago, REPORT_INTERVAL) if s.online else s.seen_ago


def child_view(
    child: ChildSiteRecord,
    servers: dict[str, ChildServerRow],
    held: dict[str, list[str]],
    now: float,
) -> ChildSiteView:
    """What the parent knows of one child: its state, and its servers as kept here."""
    online = child.last_seen is not None and now - child.last_seen < CHILD_OFFLINE_AFTER
    views = tuple(
        ChildServerView(
            r.name,
            online and r.last_seen is not None and now - r.last_seen < SERVER_ONLINE_AFTER,
            r.last_seen,
            r.disk_free,
            tuple(held.get(r.name, ())),
        )
        for r in sorted(servers.values(), key=lambda r: r.name)
        if not r.removed
    )
    return ChildSiteView(
        child.name,
        child.url,
        child.site_name,
        child.created_at,
        child.last_seen,
        online,
        views,
        child.bandwidth,
        Schedule.from_json(child.windows),
    )


def _link_words(bandwidth: float | None, schedule: Schedule | None) -> str:
    parts = []
    if bandwidth:
        parts.append(f"at most {format_rate(bandwidth)}")
    if schedule is not None and schedule.windows:
        parts.append(f"windows {schedule.text()}")
    return f"; {', '.join(parts)}" if parts else ""


class HierarchyUseCases(FleetUseCases):
    def add_child(
        self,
        name: str,
        url: str,
        token_hash: str,
        now: float,
        bandwidth: float | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        store = self.store
        windows = (schedule or Schedule()).to_json()
        with store.transaction():
            store.add_child_site(name, url, token_hash, now, bandwidth, windows)
            message = (
                f"child site {name} added ({url}){_link_words(bandwidth, schedule)}{self._by()}"
            )
            store.add_event("child", message, now=now, actor=self.actor)

    def set_child_link(
        self, name: str, bandwidth: float | None, schedule: Schedule, now: float
    ) -> None:
        """The link's limits: its bandwidth (None: unlimited) and its windows. Work waiting
        for the link (a window that was closed, a back-off) is due again at once: the
        sender looks at the new limits."""
        store = self.store
        with store.transaction():
            store.set_child_link(name, bandwidth, schedule.to_json())
            waiting = store.child_retries(name, [InstructionState.RETRYING.value])
            if store.apply("wake", waiting, now, next_attempt_at=now):
                store.notify()
            words = _link_words(bandwidth, schedule) or " unlimited, always open"
            message = f"link to child site {name}:{words.removeprefix(';')}{self._by()}"
            store.add_event("child", message, now=now, actor=self.actor)

    def record_child_report(self, child: ChildSiteRecord, report: ChildReport, now: float) -> int:
        """Take a child's report: its servers kept as rows here (``CHILD/SERVER``), what
        each holds, the ones it no longer has removed (their unfinished work cancelled); the
        retrying work of a server that is back or holds more wakes. An event when the child
        reports for the first time, or again after it was offline. Returns how many
        instructions woke."""
        store = self.store
        with store.transaction():
            held = store.child_holdings_all(child.name)  # one read, compared in Python
            kept = store.servers_of_child(child.name)
            woken = 0
            for s in report.servers:
                name = f"{child.name}/{s.name}"
                seen = None if s.seen_ago is None else now - _heard_ago(s)
                row = kept.get(name)
                store.put_child_server(name, child.name, child.url, seen, s.disk_free, now, row)
                gained = False
                recorded = set(held.get(name, ())) if row is not None and not row.removed else set()
                if recorded != set(s.installed):
                    gained = self.sync_holdings(name, recorded, s.installed, now)
                back = seen is not None and (
                    row is None or row.last_seen is None or seen - row.last_seen > SILENCE
                )
                if (gained or back) and now - (seen or 0) < SERVER_ONLINE_AFTER:
                    due = store.waiting_retries(name, now)
                    woken += len(store.apply("wake", due, now, next_attempt_at=now))
            reported = {f"{child.name}/{s.name}" for s in report.servers}
            for name, row in kept.items():
                if not row.removed and name not in reported:
                    self._child_server_gone(child.name, name, now)
            store.record_child_report(child.name, report.site, report.ca, now)
            self._report_events(child, report, now)
            if woken:
                store.notify()
        return woken

    def _child_server_gone(self, child: str, server: str, now: float) -> None:
        n = self._remove_server(server, now, f"server removed at child site {child}")
        message = f"server {server} is no longer reported by child site {child}"
        if n:
            message += f"; {counted(n, 'unfinished instruction')} cancelled"
        self.store.add_event("server", message, server=server, now=now)

    def _report_events(self, child: ChildSiteRecord, report: ChildReport, now: float) -> None:
        n = len(report.servers)
        held = f"{n} server{'' if n == 1 else 's'}"
        if child.last_seen is None:
            words = f"child site {child.name} ({report.site}) reported for the first time: {held}"
            self.store.add_event("child", words, now=now)
        elif now - child.last_seen >= CHILD_OFFLINE_AFTER:
            gone = round(now - child.last_seen)
            words = f"child site {child.name} is back after {gone}s: {held}"
            self.store.add_event("child", words, now=now)

    def unwanted_relays(
        self, child: str, relayed: tuple[tuple[str, str], ...]
    ) -> list[tuple[str, str]]:
        """Of the installs a child says this site sent it and it has not finished, those
        this site no longer wants (its instruction cancelled, superseded or gone)."""
        by_package: dict[str, list[str]] = {}
        for package_id, server in relayed:
            by_package.setdefault(package_id, []).append(server)
        unwanted = []
        for package_id, servers in by_package.items():
            names = [f"{child}/{s}" for s in servers]
            rows = self.store.unfinished_of_package(package_id, names, "install", UNFINISHED)
            wanted = {r["server"] for r in rows}
            unwanted += [
                (package_id, s) for s, n in zip(servers, names, strict=True) if n not in wanted
            ]
        return unwanted

    def child_sites(self, now: float) -> list[ChildSiteView]:
        store = self.store
        return [
            child_view(c, store.servers_of_child(c.name), store.child_holdings(c.name), now)
            for c in store.list_child_sites()
        ]

    # --- at a child: the work its parent sends ------------------------------------------

    def relay_install(
        self, package_id: str, server: str, parent: str, repair: bool, now: float
    ) -> str | None:
        """The parent wants the package on ``server``: a job here for it (marked as the
        parent's: ``relayed_by``), unless one is under way already or the server holds it,
        verified (and no repair is asked); the new job's id."""
        store = self.store
        with store.transaction():
            if store.unfinished_of_package(package_id, [server], "install", UNFINISHED):
                return None
            if not repair and store.holds_verified(server, package_id):
                return None
            options: dict[str, Any] = {"relayed_by": parent}
            if repair:
                options["repair"] = True
            job = self.distribute(package_id, [server], now, options=options)
            store.add_event("child", f"job {job} sent by parent site {parent}", job, now=now)
            return job

    def relay_remove(self, package_id: str, server: str, parent: str, now: float) -> str | None:
        """The parent wants the package off ``server``: a removal job here (which supersedes
        any install still unfinished), unless one is under way already; its id."""
        store = self.store
        with store.transaction():
            if store.unfinished_of_package(package_id, [server], "remove", UNFINISHED):
                return None
            job = self.add_job(
                package_id, [server], None, None, {"relayed_by": parent}, now, "remove"
            )
            store.add_event("child", f"job {job} sent by parent site {parent}", job, now=now)
            return job

    def cancel_relayed(self, package_id: str, server: str, parent: str, now: float) -> int:
        """The parent no longer wants the package on ``server``: the unfinished installs it
        sent here stop (this site's own jobs are its operators' business)."""
        store = self.store
        with store.transaction():
            rows = store.unfinished_of_package(package_id, [server], "install", UNFINISHED)
            ids = [r["id"] for r in rows if _relayed_by(r["options"]) == parent]
            n = len(
                store.apply("cancel", ids, now, **cancelled(now, f"cancelled by parent {parent}"))
            )
            if n:
                words = f"parent site {parent} cancelled the install on {server}"
                store.add_event("cancelled", words, server=server, now=now)
        return n

    def relayed_unfinished(self, parent: str) -> list[tuple[str, str]]:
        """``(package id, server)`` of the installs the parent sent here that are not done:
        what the parent is asked about in each report (it answers those it no longer wants)."""
        rows = self.store.relayed_unfinished(sorted(s.value for s in UNFINISHED))
        return [(r["package_id"], r["server"]) for r in rows if _relayed_by(r["options"]) == parent]


def _relayed_by(options: Any) -> str | None:
    try:
        doc = json.loads(options) if isinstance(options, str) else options
    except ValueError:
        return None
    found = doc.get("relayed_by") if isinstance(doc, dict) else None
    return found if isinstance(found, str) else None
