"""``GET /search?q=TEXT`` (and ``GET /api/search?q=TEXT``): servers and packages whose name
holds the text, jobs whose id starts with it, each linked to its page. A search that
finds exactly one server, or one job by its whole id, goes straight to its page."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from packdist.site import pages
from packdist.site.html_bits import h, package_link, server_link
from packdist.store.search import Found

if TYPE_CHECKING:
    from packdist.site.dashboard import Dashboard

MAX_QUERY = 200  # characters of a search


def _query(request: web.Request) -> str:
    return request.query.get("q", "").strip()[:MAX_QUERY]


def results(text: str, found: Found) -> str:
    if not text:
        return (
            '<section><h1>Search</h1><p class="muted">a server, a package or a job id</p></section>'
        )

    def block(title: str, items: list[str]) -> str:
        body = "".join(f"<li>{i}</li>" for i in items) or '<li class="muted">none</li>'
        return f"<section><h2>{h(title)}</h2><ul>{body}</ul></section>"

    return (
        f"<section><h1>Search: {h(text)}</h1></section>"
        + block("Servers", [server_link(s) for s in found.servers])
        + block("Packages", [package_link(p) for p in found.packages])
        + block("Jobs", [f'<a href="/jobs/{h(j)}">job {h(j)}</a>' for j in found.jobs])
    )


class SearchPage:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/search", self.page)
        app.router.add_get("/api/search", self.api)

    async def _find(self, text: str) -> Found:
        if not text:
            return Found([], [], [])
        found: Found = await self.dashboard.site.db(lambda s: s.search(text))
        return found

    async def page(self, request: web.Request) -> web.Response:
        await self.dashboard._page_guard(request)
        text = _query(request)
        found = await self._find(text)
        if len(found.servers) == 1 and not found.jobs and found.servers[0] == text:
            raise web.HTTPSeeOther(f"/servers/{quote(text, safe='')}")
        if found.jobs == [text] and not found.servers:
            raise web.HTTPSeeOther(f"/jobs/{quote(text, safe='')}")
        site = self.dashboard.site.site_name
        return self.dashboard._html(
            pages.page(f"packdist: search {text}", site, results(text, found))
        )

    async def api(self, request: web.Request) -> web.Response:
        await self.dashboard.api_guard(request)
        text = _query(request)
        found = await self._find(text)
        return web.json_response(
            {"q": text, **asdict(found)}, headers={"Cache-Control": "no-store"}
        )
