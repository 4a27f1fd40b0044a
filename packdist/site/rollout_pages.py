"""The dashboard's rollout pages and their actions, served by ``site serve``:

* ``GET /rollouts`` — every rollout, newest first: its package, state, waves started.
* ``GET /rollouts/{id}`` — one rollout wave by wave: each wave's servers, state, a bar of its
  instructions by state, its job; why it paused; its own events. Live, as the job page.
* ``GET /api/rollouts``, ``GET /api/rollouts/{id}`` — the same as JSON (with ``"html"``).
* ``POST /api/rollouts/{id}/pause|resume|cancel`` — role operator or admin, with the same
  cross-site checks as the job actions (:mod:`packdist.site.operator_api`); the event it
  records names who. A viewer sees no buttons and is answered 403.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from packdist.core.words import counted
from packdist.errors import NotFound
from packdist.service import Service
from packdist.service.rollouts import DONE_WORDS
from packdist.site import pages
from packdist.site.html_bits import badge, h
from packdist.site.operator import Role
from packdist.site.operator_api import Caller, check_not_forged, require
from packdist.site.rollout_views import rollout_doc, rollout_json
from packdist.site.timeline import events_block
from packdist.site.views import event_json
from packdist.states import RolloutState
from packdist.store.base import Store

if TYPE_CHECKING:
    from packdist.site.dashboard import Dashboard

ACTIONS = {"pause": RolloutState.RUNNING, "resume": RolloutState.PAUSED}  # shown in that state
BAR_STATES = ("installed", "sending", "pending", "retrying", "failed", "cancelled")


class RolloutPages:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/rollouts", self.list_page)
        app.router.add_get("/rollouts/{rollout_id}", self.rollout_page)
        app.router.add_get("/api/rollouts", self.list_api)
        app.router.add_get("/api/rollouts/{rollout_id}", self.rollout_api)
        for verb in ("pause", "resume", "cancel"):
            app.router.add_post(f"/api/rollouts/{{rollout_id}}/{verb}", self.act)

    async def _read(self, fn: Any) -> Any:
        return await self.dashboard.site.db(fn)

    def _page(self, title: str, body: str, status: int = 200) -> web.Response:
        site = self.dashboard.site.site_name
        return self.dashboard._html(pages.page(title, site, body, refresh=True), status)

    async def list_page(self, request: web.Request) -> web.Response:
        await self.dashboard._page_guard(request)
        docs = await self._read(_list_docs)
        return self._page("packdist: rollouts", pages.live("/api/rollouts", list_content(docs)))

    async def list_api(self, request: web.Request) -> web.Response:
        await self.dashboard.api_guard(request)
        docs = await self._read(_list_docs)
        return _json({"rollouts": docs, "html": list_content(docs)})

    async def rollout_page(self, request: web.Request) -> web.Response:
        caller = await self.dashboard._page_guard(request)
        rollout_id = request.match_info["rollout_id"]
        try:
            doc = await self._read(lambda s: _one_doc(s, rollout_id))
        except NotFound as exc:
            return self._page("packdist: not found", pages.not_found_page_body(exc.message), 404)
        now = time.time()
        body = pages.live(
            f"/api/rollouts/{quote(rollout_id)}", buttons(doc, caller) + rollout_content(doc, now)
        )
        return self._page(f"packdist: rollout {rollout_id}", body)

    async def rollout_api(self, request: web.Request) -> web.Response:
        caller = await self.dashboard.api_guard(request)
        rollout_id = request.match_info["rollout_id"]
        doc = await self._read(lambda s: _one_doc(s, rollout_id))
        # the buttons are part of the live page: they follow the rollout's state
        return _json({**doc, "html": buttons(doc, caller) + rollout_content(doc, time.time())})

    async def act(self, request: web.Request) -> web.Response:
        verb = request.path.rsplit("/", 1)[1]
        caller = await self.dashboard.api_guard(request)
        require(caller, Role.OPERATOR, f"{verb} of a rollout")
        check_not_forged(request, caller)
        rollout_id = request.match_info["rollout_id"]

        def run(store: Store) -> tuple[int, str]:
            """The instructions cancelled, and the rollout's state after: one store call."""
            service, now = Service(store, caller.name), time.time()
            cancelled = 0
            if verb == "cancel":
                cancelled = service.cancel_rollout(rollout_id, now)
            else:
                getattr(service, f"{verb}_rollout")(rollout_id, now)
            return cancelled, service.get_rollout(rollout_id).state.value

        cancelled, state = await self._read(run)
        message = f"rollout {rollout_id} {DONE_WORDS[verb]} by {caller.name}"
        if verb == "cancel":
            message += f" ({counted(cancelled, 'unfinished instruction')} cancelled)"
        return _json({"rollout": rollout_id, "state": state, "by": caller.name, "message": message})


def _list_docs(store: Store) -> list[dict[str, Any]]:
    return [rollout_json(r) for r in store.rollouts()]


def _one_doc(store: Store, rollout_id: str) -> dict[str, Any]:
    found = Service(store).get_rollout(rollout_id)
    doc = rollout_doc(store, found)
    doc["events"] = [event_json(e) for e in store.rollout_events(rollout_id)]
    return doc


def buttons(doc: dict[str, Any], caller: Caller) -> str:
    """Pause or resume, and cancel, for an operator or admin while the rollout is not done."""
    if not caller.operator.role.allows(Role.OPERATOR):
        return ""
    state = RolloutState(doc["state"])
    if state not in (RolloutState.RUNNING, RolloutState.PAUSED):
        return ""
    base = h(f"/api/rollouts/{quote(doc['id'], safe='')}")
    shown = [verb for verb, when in ACTIONS.items() if when is state]
    parts = [
        f'<button type="button" data-post="{base}/{verb}">{verb.title()} rollout</button>'
        for verb in shown
    ]
    parts.append(
        f'<button type="button" data-post="{base}/cancel" data-confirm="Cancel this rollout and'
        ' the unfinished instructions of its started waves?">Cancel rollout</button>'
    )
    return (
        f'<div class="actions" data-by="{h(caller.name)}">{"".join(parts)}'
        '<span class="action-result muted" role="status"></span></div>'
    )


def list_content(docs: list[dict[str, Any]]) -> str:
    if not docs:
        return (
            '<section><h2>Rollouts</h2><p class="muted">no rollouts yet: '
            "<code>packdist rollout create NAME@VERSION --all --waves 1,10%,100%</code></p></section>"
        )
    rows = []
    for d in docs:
        started = sum(1 for w in d["waves"] if w["job"])
        rows.append(
            f'<tr><td><a href="/rollouts/{h(d["id"])}">{h(d["id"])}</a></td>'
            f'<td class="pkg">{h(d["package"])}</td><td>{badge(d["state"])}</td>'
            f"<td>{started}/{len(d['waves'])} started</td>"
            f'<td class="muted">{h(d["why"] or "")}</td></tr>'
        )
    return (
        "<section><h2>Rollouts</h2><table><thead><tr><th>rollout</th><th>package</th>"
        "<th>state</th><th>waves</th><th>why</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _bar(counts: dict[str, int], total: int) -> str:
    if not total:
        return ""
    parts = [
        f'<span class="seg s-{s}" style="width:{100 * counts[s] / total:.1f}%"'
        f' title="{counts[s]} {s}"></span>'
        for s in BAR_STATES
        if counts.get(s)
    ]
    words = ", ".join(f"{counts[s]} {s}" for s in BAR_STATES if counts.get(s))
    return (
        f'<span class="stack" role="img" aria-label="{h(words)}">{"".join(parts)}</span> {h(words)}'
    )


def rollout_content(doc: dict[str, Any], now: float) -> str:
    head = (
        f'<section><h1>Rollout {h(doc["id"])} <span class="pkg">{h(doc["package"])}</span>'
        f" {badge(doc['state'])}</h1>"
        + (f'<p class="why">{h(doc["why"])}</p>' if doc["why"] else "")
        + f'<p class="muted">error threshold {doc["error_threshold"]:g}%, wave timeout'
        f" {doc['wave_timeout']:g}s, windows: {h(doc['schedule'])}"
        + (", activates" if doc["activate"] else "")
        + (
            f", health check <code>{h(' '.join(doc['health_check']))}</code>"
            if doc["health_check"]
            else ""
        )
        + "</p></section>"
    )
    rows = []
    for n, w in enumerate(doc["waves"], 1):
        servers = w["servers"]
        shown = ", ".join(servers[:8]) + (
            f" and {len(servers) - 8} more" if len(servers) > 8 else ""
        )
        job = f'<a href="/jobs/{h(w["job"])}">job {h(w["job"])}</a>' if w["job"] else ""
        rows.append(
            f"<tr><td>{n}</td><td>{badge(w['state'])}</td><td>{len(servers)}</td>"
            f'<td class="bar">{_bar(w.get("counts") or {}, len(servers))}</td>'
            f'<td>{job}</td><td class="servers">{h(shown)}</td></tr>'
        )
    waves = (
        "<section><h2>Waves</h2><table><thead><tr><th>wave</th><th>state</th><th>servers</th>"
        "<th>progress</th><th>job</th><th>which</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )
    return head + waves + events_block(doc.get("events", []), now, "Timeline")


def _json(doc: dict[str, Any]) -> web.Response:
    return web.json_response(doc, headers={"Cache-Control": "no-store"})
