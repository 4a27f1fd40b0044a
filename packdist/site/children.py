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

from aiohttp import web

from packdist.auth import bearer, hash_token, looks_like_token
from packdist.errors import AuthError
from packdist.protocol.hierarchy import REPORT_PATH, ChildReport, ReportAnswer
from packdist.service import Service
from packdist.service.hierarchy import CHILD_OFFLINE_AFTER, REPORT_INTERVAL
from packdist.site.beats import json_body
from packdist.site.store_runner import StoreRunner
from packdist.store.records import ChildSiteRecord

log = logging.getLogger("packdist.site")


class ChildDesk:
    def __init__(self, db: StoreRunner, site_name: str = "") -> None:
        self.db = db
        self.site_name = site_name  # set once the site has read its name

    def routes(self, app: web.Application) -> None:
        app.router.add_post(REPORT_PATH, self.report)

    async def child(self, request: web.Request) -> ChildSiteRecord:
        """The child site whose token the request carries; AuthError (a 401) if none."""
        token = bearer(request.headers.get("Authorization"))
        if not looks_like_token(token):  # refused without a database lookup
            raise AuthError("unknown child site token")
        token_hash = hash_token(token)
        child = await self.db(lambda s: s.child_site_by_token_hash(token_hash))
        if child is None:
            raise AuthError("unknown child site token")
        return child

    async def report(self, request: web.Request) -> web.Response:
        child = await self.child(request)
        report = ChildReport.from_json(await json_body(request))
        now = time.time()
        await self.db(lambda s: Service(s).record_child_report(child, report, now))
        if child.last_seen is None or now - child.last_seen >= CHILD_OFFLINE_AFTER:
            log.info("child site %s reports: %d server(s)", child.name, len(report.servers))
        return web.json_response(ReportAnswer(self.site_name, REPORT_INTERVAL).to_json())
