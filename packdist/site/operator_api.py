"""The dashboard JSON API's write routes: what an operator may change over HTTP.

* ``POST /api/jobs/{id}/cancel`` — cancel every unfinished instruction of the job;
  ``{"job": ID, "cancelled": N, "by": NAME}``.
* ``POST /api/jobs/{id}/retry`` — revive its failed and cancelled instructions, make its
  waiting retries due now; ``{"job": ID, "queued": N, "by": NAME}`` (as ``job retry --json``).

Each needs the role ``operator`` or ``admin`` (a viewer is answered 403 and nothing
changes), and runs the same use case as ``packdist job cancel|retry``
(:class:`packdist.service.Service`) with the operator's name as the actor: the event it
records names who did it (``by`` in ``events --json``).

Cross-site requests: a browser attaches the session cookie by itself, so a write carried by
the cookie must also send the header ``X-Packdist-Action: 1`` (which a page of another
site cannot send without a CORS preflight this site never answers) and, if it sends
``Origin``, this site's own; the cookie is ``SameSite=Strict`` too. A write carried by
``Authorization: Bearer`` needs neither: a browser never adds that header by itself.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from aiohttp import web

from packdist.errors import Forbidden
from packdist.service import Service
from packdist.site.operator import OperatorCredential, Role
from packdist.store.base import Store

if TYPE_CHECKING:
    from packdist.site.dashboard import Dashboard

ACTION_HEADER = "X-Packdist-Action"  # what a write carried by the session cookie must send


@dataclass(frozen=True)
class Caller:
    """Who sent a request, and how: a session cookie (a browser's) or a bearer."""

    operator: OperatorCredential
    by_session: bool

    @property
    def name(self) -> str:
        return self.operator.name


def require(caller: Caller, needed: Role, doing: str) -> None:
    """Forbidden (403) unless the caller's role allows ``doing``."""
    if not caller.operator.role.allows(needed):
        raise Forbidden(
            f"operator {caller.name} has role {caller.operator.role.value}: {doing} needs"
            f" role {needed.value} or admin"
        )


def check_not_forged(request: web.Request, caller: Caller) -> None:
    """Forbidden (403) for a write the session cookie carries without this site's own
    marks: the action header, and this site's origin if the browser names one."""
    if not caller.by_session:
        return  # a bearer: no browser sends one by itself
    if not request.headers.get(ACTION_HEADER):
        raise Forbidden(
            f"a write with the session cookie must send the header {ACTION_HEADER}: 1"
            " (or use Authorization: Bearer)"
        )
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.host):
        raise Forbidden("a write from a page of another site is refused")


class OperatorApi:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/jobs/{job_id}/cancel", self.cancel)
        app.router.add_post("/api/jobs/{job_id}/retry", self.retry)

    async def _acting(self, request: web.Request, doing: str) -> Caller:
        """The operator making this write, once it is allowed (401, 403 otherwise)."""
        caller = await self.dashboard.api_guard(request)
        require(caller, Role.OPERATOR, doing)
        check_not_forged(request, caller)
        return caller

    async def _run(self, use_case: Callable[[Store], int]) -> int:
        return await self.dashboard.site.db(use_case)

    async def cancel(self, request: web.Request) -> web.Response:
        caller = await self._acting(request, "cancelling a job")
        job_id = request.match_info["job_id"]
        n = await self._run(lambda s: Service(s, caller.name).cancel_job(job_id, time.time()))
        return _json({"job": job_id, "cancelled": n, "by": caller.name})

    async def retry(self, request: web.Request) -> web.Response:
        caller = await self._acting(request, "retrying a job")
        job_id = request.match_info["job_id"]
        n = await self._run(lambda s: Service(s, caller.name).retry_job(job_id, time.time()))
        return _json({"job": job_id, "queued": n, "by": caller.name})


def action_buttons(job_id: str, caller: Caller) -> str:
    """The job page's cancel and retry buttons (``dashboard.js`` sends them with the action
    header), for a caller whose role may use them: none for a viewer."""
    if not caller.operator.role.allows(Role.OPERATOR):
        return ""
    base = html.escape(f"/api/jobs/{quote(job_id, safe='')}")
    who = html.escape(caller.name)
    return (
        f'<div class="actions" data-by="{who}">'
        f'<button type="button" data-post="{base}/cancel"'
        ' data-confirm="Cancel every unfinished instruction of this job?">Cancel job</button>'
        f'<button type="button" data-post="{base}/retry">Retry job</button>'
        '<span class="action-result muted" role="status"></span></div>'
    )


def _json(doc: dict[str, object]) -> web.Response:
    return web.json_response(doc, headers={"Cache-Control": "no-store"})
