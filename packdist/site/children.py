"""The parent's side of its child sites: the route their reports arrive on.

* ``POST /v1/child/report`` — a child site's enrollment token (``site add-child``): the
  child's servers and its descendants' (:class:`packdist.protocol.hierarchy.ChildReport`);
  the answer names this site and the seconds to wait before the next report.

What a report means is read by :mod:`packdist.service.hierarchy`; the child's side is
:mod:`packdist.site.parent_link`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from packdist.auth import bearer, hash_token, looks_like_token
from packdist.core.schedule import Schedule
from packdist.errors import AuthError
from packdist.protocol.hierarchy import REPORT_PATH, ChildReport, ReportAnswer
from packdist.ratelimit import Bucket
from packdist.service import Service
from packdist.service.hierarchy import CHILD_OFFLINE_AFTER, REPORT_INTERVAL
from packdist.site.beats import json_body
from packdist.site.content_routes import Reader
from packdist.site.store_runner import StoreRunner
from packdist.store.core import Store
from packdist.store.records import ChildSiteRecord

log = logging.getLogger("packdist.site")


class ChildDesk:
    def __init__(self, db: StoreRunner, key: str, chain: Callable[[], list[str]]) -> None:
        self.db = db
        self.site_name = ""  # set once the site has read its name
        self.key = key  # this site's public key (hex): its children trust it
        self.chain = chain  # the keys of the sites above this one, as it knows them now
        #: told the child sites whose reports woke work here (the despooler's wake)
        self.on_woken: Callable[[int], None] = lambda n: None
        #: each child's link as last read: its bandwidth (one bucket for all its streams,
        #: kept while the limit stands) and its schedule
        self._links: dict[str, tuple[float | None, str, Bucket | None, Schedule]] = {}

    def reader(self, child: ChildSiteRecord) -> Reader:
        """What a child's content request may take: its link's bandwidth and windows."""
        kept = self._links.get(child.name)
        if kept is None or kept[:2] != (child.bandwidth, child.windows):
            bucket = Bucket(child.bandwidth) if child.bandwidth else None
            kept = (child.bandwidth, child.windows, bucket, Schedule.from_json(child.windows))
            self._links[child.name] = kept
        schedule = kept[3]

        async def may_read(package_id: str) -> bool:
            return await self.db(lambda s: s.sent_to_child(child.name, package_id))

        closed = schedule.closed_words if schedule.windows else None
        return Reader(f"child site {child.name}", kept[2], closed, may_read)

    def routes(self, app: web.Application) -> None:
        app.router.add_post(REPORT_PATH, self.report)

    async def child(self, request: web.Request) -> ChildSiteRecord:
        """The child site whose token the request carries; AuthError (a 401) if none."""
        child = await self.child_or_none(request)
        if child is None:
            raise AuthError("unknown child site token")
        return child

    async def child_or_none(self, request: web.Request) -> ChildSiteRecord | None:
        token = bearer(request.headers.get("Authorization"))
        if not looks_like_token(token):  # refused without a database lookup
            return None
        token_hash = hash_token(token)
        return await self.db(lambda s: s.child_site_by_token_hash(token_hash))

    async def report(self, request: web.Request) -> web.Response:
        child = await self.child(request)
        report = ChildReport.from_json(await json_body(request))
        now = time.time()

        def take(store: Store) -> tuple[int, list[tuple[str, str]]]:
            service = Service(store)
            woken = service.record_child_report(child, report, now)
            return woken, service.unwanted_relays(child.name, report.relayed)

        woken, unwanted = await self.db(take)
        if child.last_seen is None or now - child.last_seen >= CHILD_OFFLINE_AFTER:
            log.info("child site %s reports: %d server(s)", child.name, len(report.servers))
        if woken:
            log.info("child site %s: %d instruction(s) woken", child.name, woken)
            self.on_woken(woken)
        answer = ReportAnswer(
            self.site_name,
            REPORT_INTERVAL,
            child.name,
            self.key,
            tuple(self.chain()),
            tuple(unwanted),
        )
        return web.json_response(answer.to_json())
