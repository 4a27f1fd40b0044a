"""The dashboard's page of one distribution server, ``GET /servers/{name}`` (and
``GET /api/servers/{name}`` as JSON, with the live part in ``"html"``): its heartbeat,
free disk, labels and groups, the versions it holds (the active one marked), its newest
instructions with their causes, and its own timeline. A few indexed reads, whatever the
size of the fleet or of its history."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from packdist.core.timefmt import iso
from packdist.core.words import human_bytes
from packdist.errors import NotFound
from packdist.site import pages, views
from packdist.site.html_bits import badge, h, when
from packdist.site.job_docs import cancelled_why
from packdist.site.timeline import events_block
from packdist.store.base import Store

if TYPE_CHECKING:
    from packdist.site.dashboard import Dashboard

INSTRUCTIONS_SHOWN = 50
EVENTS_SHOWN = 100
NOTHING_HELD = '<li class="muted">nothing</li>'


def server_doc(store: Store, name: str, now: float) -> dict[str, Any]:
    record = store.server(name)
    if record is None:
        raise NotFound(f"no server named {name} (see 'packdist server list')")
    refs = store.package_refs()
    held = sorted(refs.get(pid, pid[:12]) for pid in store.holdings(name))
    active = [
        refs.get(a.package_id, a.package_id[:12]) for a in store.active_versions(name).values()
    ]
    after = views.online_after(store.server_counts(now)[0])
    doc = views.server_json(record, now, held, after)
    doc["active"] = sorted(active)
    doc["created_at"] = iso(record.created_at)
    doc["instructions"] = [
        {
            "job": r["job_id"],
            "package": f"{r['name']}@{r['version']}",
            "action": r["action"],
            "state": r["state"],
            "attempts": int(r["attempts"]),
            "last_error": r["last_error"],
            "error_kind": r["error_kind"],
            "cancel_cause": r["cancel_cause"],
            "next_attempt_at": iso(r["next_attempt_at"]),
            "updated_at": iso(r["updated_at"]),
        }
        for r in store.server_history(name, INSTRUCTIONS_SHOWN)
    ]
    doc["events"] = [views.event_json(e) for e in store.server_events(name, EVENTS_SHOWN)]
    doc["site"] = store.site_name()
    return doc


def server_content(doc: dict[str, Any], now: float) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in doc["labels"].items()) or "none"
    groups = ", ".join(doc["groups"]) or "none"
    held = "".join(
        f'<li><span class="pkg">{h(ref)}</span>'
        + (f" {badge('active')}" if ref in doc["active"] else "")
        + "</li>"
        for ref in doc["installed"]
    )
    rows = []
    for i in doc["instructions"]:
        cause = i["last_error"] or ""
        if i["state"] == "cancelled":  # the error before a cancel is not its reason
            cause = cancelled_why(i["cancel_cause"])
        rows.append(
            f'<tr><td><a href="/jobs/{h(i["job"])}">{h(i["job"])}</a></td>'
            f'<td class="pkg">{h(i["package"])}</td><td>{h(i["action"])}</td>'
            f"<td>{badge(i['state'])}</td><td>{i['attempts']}</td>"
            f'<td class="why">{h(cause)}</td></tr>'
        )
    table = (
        "<table><thead><tr><th>job</th><th>package</th><th>action</th><th>state</th>"
        f"<th>attempts</th><th>cause</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">no instruction yet</p>'
    )
    return (
        f"<section><h1>Server {h(doc['name'])} {badge('online' if doc['online'] else 'offline')}</h1>"
        f'<dl class="facts"><dt>url</dt><dd>{h(doc["url"])}</dd>'
        f"<dt>heartbeat</dt><dd>{when(doc['last_seen'], now)}</dd>"
        f"<dt>disk free</dt><dd>{h(human_bytes(doc['disk_free']) if doc['disk_free'] is not None else 'not reported')}</dd>"
        f"<dt>labels</dt><dd>{h(labels)}</dd><dt>groups</dt><dd>{h(groups)}</dd>"
        f"<dt>enrolled</dt><dd>{when(doc['created_at'], now)}</dd></dl></section>"
        f'<section><h2>Holds</h2><ul class="held">{held or NOTHING_HELD}</ul></section>'
        f"<section><h2>Instructions</h2>{table}</section>"
        + events_block(doc["events"], now, "Timeline")
    )


class ServerPages:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/servers/{name}", self.page)
        app.router.add_get("/api/servers/{name}", self.api)

    async def page(self, request: web.Request) -> web.Response:
        await self.dashboard._page_guard(request)
        name, now = request.match_info["name"], time.time()
        site = self.dashboard.site.site_name
        try:
            doc = await self.dashboard.site.db(lambda s: server_doc(s, name, now))
        except NotFound as exc:
            return self.dashboard._html(pages.not_found_page(site, exc.message), 404)
        body = pages.live(f"/api/servers/{quote(name, safe='')}", server_content(doc, now))
        return self.dashboard._html(
            pages.page(f"packdist: server {name}", site, body, refresh=True)
        )

    async def api(self, request: web.Request) -> web.Response:
        await self.dashboard.api_guard(request)
        name, now = request.match_info["name"], time.time()
        doc = await self.dashboard.site.db(lambda s: server_doc(s, name, now))
        return web.json_response(
            {**doc, "html": server_content(doc, now)}, headers={"Cache-Control": "no-store"}
        )
