"""``GET /packages/{NAME@VERSION}?word=W&offset=N`` (and ``/api/packages/…``): one version
on the whole fleet, in counts per word (installed, in progress, retrying, failed, corrupt,
cancelled, removing) with a bar, drilling down to one page of the servers in one word,
each with its cell's detail and job. Two reads by the package (each in proportion to the servers sent it)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from packdist.core.names import parse_ref
from packdist.errors import NotFound, PackdistError, UserError
from packdist.site import pages, views
from packdist.site.dashboard_inputs import query_count
from packdist.site.html_bits import badge, h, server_link
from packdist.site.package_actions import action_form
from packdist.store.base import Store

if TYPE_CHECKING:
    from packdist.site.dashboard import Dashboard

WORDS = ("installed", "in progress", "retrying", "failed", "corrupt", "cancelled", "removing")
PAGE = 200  # servers shown per page


def package_doc(
    store: Store, ref: str, now: float, word: str | None, offset: int
) -> dict[str, Any]:
    try:
        name, version = parse_ref(ref)
    except PackdistError as exc:
        raise NotFound(f"no package {ref}: {exc.message}") from None
    pkg = store.find_package(name, version)
    if pkg is None:
        raise NotFound(f"no package {ref} (see 'packdist package list')")
    cells = [(c.server, views.cell_view(c, now)) for c in store.package_cells(pkg.id)]
    counts: dict[str, int] = {}
    for _, v in cells:
        if v["word"] != "-":
            counts[v["word"]] = counts.get(v["word"], 0) + 1
    chosen = [(s, v) for s, v in cells if v["word"] != "-" and (word is None or v["word"] == word)]
    chosen.sort(
        key=lambda sv: (WORDS.index(sv[1]["word"]) if sv[1]["word"] in WORDS else 99, sv[0])
    )
    return {
        "site": store.site_name(),
        "package": pkg.ref,
        "counts": counts,
        "servers_total": store.server_counts(now)[0],
        "word": word,
        "offset": offset,
        "matching": len(chosen),
        "servers": [
            {"server": s, "word": v["word"], "detail": v["detail"], "job": v["job"]}
            for s, v in chosen[offset : offset + PAGE]
        ],
    }


def _bar(counts: dict[str, int], total: int, ref: str) -> str:
    if not total:
        return ""
    segs = "".join(
        f'<span class="seg s-{h(w.replace(" ", "-"))}" style="width:{100 * counts[w] / total:.2f}%"'
        f' title="{counts[w]:,} {h(w)}"></span>'
        for w in WORDS
        if counts.get(w)
    )
    links = " ".join(
        f'<a class="count" href="/packages/{h(quote(ref, safe="@"))}?word={h(quote(w))}">{badge(w)} {counts[w]:,}</a>'
        for w in WORDS
        if counts.get(w)
    )
    return f'<p><span class="stack wide">{segs}</span></p><p>{links}</p>'


def package_content(doc: dict[str, Any]) -> str:
    ref, total = doc["package"], doc["servers_total"]
    reached = sum(doc["counts"].values())
    head = (
        f'<section><h1>Package <span class="pkg">{h(ref)}</span></h1>'
        f'<p class="muted">{reached:,} of {total:,} servers have been sent it or hold it</p>'
        + _bar(doc["counts"], total, ref)
        + "</section>"
    )
    rows = "".join(
        f'<tr><th scope="row">{server_link(s["server"])}</th><td>{badge(s["word"])}</td>'
        f'<td class="why">{h(s["detail"])}</td>'
        + (
            f'<td><a href="/jobs/{h(s["job"])}">job {h(s["job"])}</a></td>'
            if s["job"]
            else "<td></td>"
        )
        + "</tr>"
        for s in doc["servers"]
    )
    title = f"Servers: {doc['word']}" if doc["word"] else "Servers"
    shown = f"{doc['offset'] + 1:,}-{doc['offset'] + len(doc['servers']):,} of {doc['matching']:,}"
    base = f"/packages/{quote(ref, safe='@')}" + (
        f"?word={quote(doc['word'])}&" if doc["word"] else "?"
    )
    nav = []
    if doc["offset"] > 0:
        nav.append(f'<a href="{h(base)}offset={max(0, doc["offset"] - PAGE)}">previous</a>')
    if doc["offset"] + PAGE < doc["matching"]:
        nav.append(f'<a href="{h(base)}offset={doc["offset"] + PAGE}">next</a>')
    if doc["word"]:
        nav.append(f'<a href="/packages/{h(quote(ref, safe="@"))}">every state</a>')
    table = (
        f'<table><tbody>{rows}</tbody></table><p class="muted">{shown} {" · ".join(nav)}</p>'
        if rows
        else '<p class="muted">none</p>'
    )
    return head + f"<section><h2>{h(title)}</h2>{table}</section>"


def _paging(request: web.Request) -> tuple[str | None, int]:
    word = request.query.get("word") or None
    if word is not None and word not in WORDS:
        raise UserError(f"word must be one of: {', '.join(WORDS)}")
    return word, query_count(request, "offset", 0)


class PackagePages:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/packages/{ref}", self.page)
        app.router.add_get("/api/packages/{ref}", self.api)

    async def page(self, request: web.Request) -> web.Response:
        caller = await self.dashboard._page_guard(request)
        ref, (word, offset), now = request.match_info["ref"], _paging(request), time.time()
        site = self.dashboard.site.site_name
        try:
            doc = await self.dashboard.site.db(lambda s: package_doc(s, ref, now, word, offset))
        except NotFound as exc:
            return self.dashboard._html(pages.not_found_page(site, exc.message), 404)
        groups = await self.dashboard.site.db(lambda s: s.group_names())
        query = f"?{request.rel_url.query_string}" if request.rel_url.query_string else ""
        body = action_form(doc["package"], caller, groups) + pages.live(
            f"/api/packages/{quote(ref, safe='@')}{query}", package_content(doc)
        )
        return self.dashboard._html(pages.page(f"packdist: {ref}", site, body, refresh=True))

    async def api(self, request: web.Request) -> web.Response:
        await self.dashboard.api_guard(request)
        ref, (word, offset), now = request.match_info["ref"], _paging(request), time.time()
        doc = await self.dashboard.site.db(lambda s: package_doc(s, ref, now, word, offset))
        return web.json_response(
            {**doc, "html": package_content(doc)}, headers={"Cache-Control": "no-store"}
        )
