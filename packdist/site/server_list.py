"""``GET /servers`` (and ``/api/servers``): every server, a page at a time, filtered by
what an operator narrows a fleet with: ``state`` (online, offline), ``group``,
``location`` (the value of the location label), ``child`` (a child site's servers) and
``q`` (a part of the name). Filters combine; the counts say how many match of how many.

One read of the servers and their groups (the fleet's size, not its history), then the
page; at 10,000 servers it is measured by ``bench views``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from packdist.core.timefmt import ago, iso
from packdist.core.words import human_bytes
from packdist.errors import UserError
from packdist.site import pages, views
from packdist.site.dashboard_inputs import query_count
from packdist.site.html_bits import badge, h, server_link
from packdist.store.base import Store

if TYPE_CHECKING:
    from packdist.site.dashboard import Dashboard

PAGE = 200
STATES = ("online", "offline")
MAX_FILTER = 200  # characters of one filter's value


@dataclass(frozen=True)
class Filters:
    state: str | None = None
    group: str | None = None
    location: str | None = None
    child: str | None = None
    q: str | None = None
    offset: int = 0

    def query(self, **change: Any) -> str:
        values = {**self.__dict__, **change}
        return urlencode({k: v for k, v in values.items() if v not in (None, "", 0)})


def filters_of(request: web.Request) -> Filters:
    got = {
        k: (request.query.get(k) or "").strip()[:MAX_FILTER] or None
        for k in Filters.__dataclass_fields__
        if k != "offset"
    }
    if got["state"] is not None and got["state"] not in STATES:
        raise UserError(f"state must be one of: {', '.join(STATES)}")
    return Filters(**got, offset=query_count(request, "offset", 0))


def servers_doc(store: Store, f: Filters, location_label: str, now: float) -> dict[str, Any]:
    servers = store.list_servers()
    after = views.online_after(len(servers))
    chosen = []
    for s in servers:
        up = views.online(s, now, after)
        if f.state is not None and up != (f.state == "online"):
            continue
        if f.group is not None and f.group not in s.groups:
            continue
        if f.location is not None and s.label(location_label) != f.location:
            continue
        if f.child is not None and not s.name.startswith(f"{f.child}/"):
            continue
        if f.q is not None and f.q.lower() not in s.name.lower():
            continue
        chosen.append((s, up))
    page = chosen[f.offset : f.offset + PAGE]
    return {
        "site": store.site_name(),
        "total": len(servers),
        "matching": len(chosen),
        "online": sum(1 for _, up in chosen if up),
        "filters": {k: v for k, v in f.__dict__.items() if k != "offset"},
        "offset": f.offset,
        "location_label": location_label,
        "servers": [
            {
                "name": s.name,
                "online": up,
                "last_seen": iso(s.last_seen),
                "last_seen_ago": ago(s.last_seen, now),
                "groups": list(s.groups),
                "labels": dict(s.labels),
                "disk_free": s.disk_free,
            }
            for s, up in page
        ],
    }


def servers_content(doc: dict[str, Any], f: Filters, now: float) -> str:
    fl = doc["filters"]
    form = (
        '<form method="get" action="/servers" class="filters">'
        f'<input name="q" value="{h(fl["q"] or "")}" placeholder="name" aria-label="name">'
        '<select name="state" aria-label="state"><option value="">online or not</option>'
        + "".join(
            f'<option value="{s}"{" selected" if fl["state"] == s else ""}>{s}</option>'
            for s in STATES
        )
        + "</select>"
        f'<input name="group" value="{h(fl["group"] or "")}" placeholder="group" aria-label="group">'
        f'<input name="location" value="{h(fl["location"] or "")}"'
        f' placeholder="{h(doc["location_label"])}" aria-label="location">'
        f'<input name="child" value="{h(fl["child"] or "")}" placeholder="child site"'
        ' aria-label="child site"><button type="submit">Filter</button></form>'
    )
    rows = "".join(
        f'<tr><th scope="row">{server_link(s["name"])}</th>'
        f"<td>{badge('online' if s['online'] else 'offline')}</td>"
        f"<td>{h(s['last_seen_ago'])}</td>"
        f'<td class="num">{h(human_bytes(s["disk_free"]) if s["disk_free"] is not None else "-")}</td>'
        f"<td>{h(', '.join(s['groups']))}</td>"
        f"<td>{h(', '.join(f'{k}={v}' for k, v in s['labels'].items()))}</td></tr>"
        for s in doc["servers"]
    )
    shown = len(doc["servers"])
    nav = []
    if f.offset > 0:
        nav.append(f'<a href="/servers?{h(f.query(offset=max(0, f.offset - PAGE)))}">previous</a>')
    if f.offset + PAGE < doc["matching"]:
        nav.append(f'<a href="/servers?{h(f.query(offset=f.offset + PAGE))}">next</a>')
    counts = (
        f"{doc['matching']:,} of {doc['total']:,} servers match ({doc['online']:,} online);"
        f" {f.offset + 1 if shown else 0:,}-{f.offset + shown:,} shown"
    )
    table = (
        '<div class="scroll"><table class="servers"><thead><tr><th scope="col">server</th>'
        '<th scope="col">agent</th><th scope="col">last heartbeat</th>'
        '<th scope="col">free disk</th><th scope="col">groups</th><th scope="col">labels</th>'
        f"</tr></thead><tbody>{rows}</tbody></table></div>"
    )
    return (
        f'<section><h1>Servers</h1>{form}<p class="muted">{counts} {" · ".join(nav)}</p>'
        f"{table if rows else ''}</section>"
    )


class ServerList:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/servers", self.page)
        app.router.add_get("/api/servers", self.api)

    async def _doc(self, f: Filters, now: float) -> dict[str, Any]:
        label = self.dashboard.settings.peers_location_label
        doc: dict[str, Any] = await self.dashboard.site.db(lambda s: servers_doc(s, f, label, now))
        return doc

    async def page(self, request: web.Request) -> web.Response:
        await self.dashboard._page_guard(request)
        f, now = filters_of(request), time.time()
        doc = await self._doc(f, now)
        query = f.query()
        body = pages.live(f"/api/servers?{query}", servers_content(doc, f, now))
        site = self.dashboard.site.site_name
        return self.dashboard._html(pages.page("packdist: servers", site, body, refresh=True))

    async def api(self, request: web.Request) -> web.Response:
        await self.dashboard.api_guard(request)
        f, now = filters_of(request), time.time()
        doc = await self._doc(f, now)
        return web.json_response(
            {**doc, "html": servers_content(doc, f, now)}, headers={"Cache-Control": "no-store"}
        )
