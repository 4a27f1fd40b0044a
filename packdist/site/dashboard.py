"""The operator dashboard, its JSON API and ``/metrics``, served by ``site serve``.

Routes (all but the login page need an operator's credential: the session cookie set by
the login form, or ``Authorization: Bearer <operator credential>``; every role may read
them, see :mod:`packdist.site.operator`):

* ``GET /`` — the overview: package x server matrix, jobs, servers, events (HTML).
* ``GET /jobs/{id}?state=S&offset=N&limit=N`` — one job: its counts per state, one page of
  its per-server progress (200 by default, those in state S if given), its timeline (HTML).
* ``GET /login``, ``POST /login``, ``POST /logout`` — the session.
* ``GET /api/overview``, ``GET /api/jobs/{id}`` — the same pages as JSON data, with the
  rendered live part in ``"html"`` (what the page's script swaps in).
* ``GET /api/events?job=J&after=ID&limit=N`` — the timeline as JSON.
* ``GET /metrics`` — Prometheus text; open to anyone if ``metrics.auth = false``.
* ``POST /api/jobs/{id}/cancel``, ``POST /api/jobs/{id}/retry`` — role operator or admin;
  see :mod:`packdist.site.operator_api`.
* the pages of a fleet, each in its module with its API: rollouts (``rollout_pages``),
  servers (``server_list``, ``server_pages``), search (``search_page``), a package version
  (``package_pages``, ``package_actions``); the live part pushed (``live_feed``).
* ``GET /static/dashboard.{css,js}`` — open.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from packdist.auth import bearer
from packdist.config import Settings
from packdist.errors import AuthError, NotFound, RateLimited
from packdist.site import metrics, pages, views
from packdist.site.dashboard_inputs import (
    job_paging,
    login_fields,
    query_count,
)
from packdist.site.gate import PasswordGate
from packdist.site.live_feed import LiveStreams
from packdist.site.operator import (
    CredentialCache,
    OperatorCredential,
    Operators,
    looks_like_password,
    named_in,
)
from packdist.site.operator_api import Caller, OperatorApi, action_buttons
from packdist.site.package_actions import PackageActions
from packdist.site.package_pages import PackagePages
from packdist.site.rollout_pages import RolloutPages
from packdist.site.search_page import SearchPage
from packdist.site.server_list import ServerList
from packdist.site.server_pages import ServerPages
from packdist.store.base import Store

if TYPE_CHECKING:
    from packdist.site.server import SiteServer

FAILED_LOGIN_DELAY = 1.0  # seconds; the password is random, this only slows a guesser more
LOGIN_BODY = 4096  # bytes of a login form: a password and a path
#: seconds one read of the overview serves every dashboard open: each tab refreshes every
#: 1.5 s, and the read walks every server on the store thread heartbeats and claims share
OVERVIEW_FRESH = 1.0
#: what a ``next=`` path may be made of: a path and query in plain URL characters (no
#: whitespace, no control characters, no backslash)
_SAFE_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}


def _static(name: str) -> bytes:
    return (resources.files("packdist.site") / "static" / name).read_bytes()


class Dashboard:
    def __init__(self, site: SiteServer) -> None:
        self.site = site
        self.credentials = CredentialCache(site.home.root)
        self.gate = PasswordGate()
        self.static = {name: _static(name) for name in _STATIC_TYPES}
        self._overview: tuple[float, dict[str, Any]] | None = None  # (when read, what)
        self._overview_read: asyncio.Future[tuple[float, dict[str, Any]]] | None = None

    @property
    def settings(self) -> Settings:
        found = getattr(self.site, "settings", None)
        return found if isinstance(found, Settings) else Settings()

    @property
    def cookie_name(self) -> str:
        name = self.site.site_name or "site"
        return "packdist_" + re.sub(r"[^A-Za-z0-9_-]", "_", name)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.overview_page)
        app.router.add_get("/jobs/{job_id}", self.job_page)
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/api/overview", self.overview_api)
        app.router.add_get("/api/jobs/{job_id}", self.job_api)
        app.router.add_get("/api/events", self.events_api)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/static/{name}", self.static_file)
        app.router.add_get("/favicon.ico", self.no_icon)

    # --- who is asking ----------------------------------------------------------------------

    async def who(self, request: web.Request) -> Caller | None:
        """The operator the request carries the credential of: a session cookie (a MAC to
        check), or its credential as a bearer (one scrypt, within the gate's limits, unless
        it was found correct before); None if none; RateLimited when over the limits."""
        operators = await asyncio.to_thread(self.credentials.get)
        if operators is None:
            return None
        cookie = request.cookies.get(self.cookie_name)
        if cookie:
            op = operators.for_session(cookie)
            if op is not None:
                return Caller(op, by_session=True)
        header = request.headers.get("Authorization")
        if header is None:
            return None
        try:
            token = bearer(header)
        except AuthError:
            return None
        if not looks_like_password(token):
            return None  # no scrypt for what cannot be a credential
        op = self.credentials.remembered(token)
        if op is None:
            op = await self._check_password(request, operators, token)
            if op is not None:
                self.credentials.remember(token, op)
        return None if op is None else Caller(op, by_session=False)

    async def _check_password(
        self, request: web.Request, operators: Operators, password: str
    ) -> OperatorCredential | None:
        """The operator whose credential ``password`` is, checked within the gate's limits
        (per client, per operator name, for the site); RateLimited when over them."""
        op = operators.for_password(password)
        name = named_in(password) or (op.name if op is not None else "")

        def check() -> bool:
            return op is not None and op.check_password(password)

        ok = await self.gate.check(_client(request), check, name=name)
        return op if ok else None

    async def _page_guard(self, request: web.Request) -> Caller:
        """HTML pages: not logged in goes to the login form, and back here after."""
        caller = await self.who(request)
        if caller is None:
            raise web.HTTPSeeOther(f"/login?next={quote(request.rel_url.path)}")
        return caller

    async def api_guard(self, request: web.Request) -> Caller:
        caller = await self.who(request)
        if caller is None:
            raise web.HTTPUnauthorized(
                text='{"error": "operator credential required (log in, or send'
                ' Authorization: Bearer <operator credential>)"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="packdist"'},
            )
        return caller

    # --- pages ------------------------------------------------------------------------------

    def _html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(
            text=text, status=status, content_type="text/html", headers=_SECURITY_HEADERS
        )

    async def _overview_doc(self) -> tuple[float, dict[str, Any]]:
        """The overview as read at most OVERVIEW_FRESH ago, and when; one read at a time,
        shared by every request that comes meanwhile."""
        if self._overview is not None and time.time() - self._overview[0] < OVERVIEW_FRESH:
            return self._overview
        if self._overview_read is None or self._overview_read.done():
            now = time.time()

            async def read() -> tuple[float, dict[str, Any]]:
                doc = await self.site.db(lambda s: views.overview(s, now))
                self._overview = (now, doc)
                return self._overview

            self._overview_read = asyncio.ensure_future(read())
        return await asyncio.shield(self._overview_read)

    async def overview_page(self, request: web.Request) -> web.Response:
        await self._page_guard(request)
        now, doc = await self._overview_doc()
        body = pages.live("/api/overview", pages.overview_content(doc, now))
        return self._html(pages.page(f"packdist {doc['site']}", doc["site"], body, refresh=True))

    async def job_page(self, request: web.Request) -> web.Response:
        caller = await self._page_guard(request)
        job_id = request.match_info["job_id"]
        state, offset, limit = job_paging(request)
        now = time.time()
        try:
            doc = await self.site.db(lambda s: views.job_page(s, job_id, now, state, offset, limit))
        except NotFound as exc:
            return self._html(pages.not_found_page(self.site.site_name, exc.message), 404)
        query = f"?{request.rel_url.query_string}" if request.rel_url.query_string else ""
        body = pages.live(f"/api/jobs/{quote(job_id)}{query}", pages.job_content(doc, now))
        body = action_buttons(job_id, caller) + body
        title = f"packdist {doc['site']}: job {job_id}"
        return self._html(pages.page(title, doc["site"], body, refresh=True))

    # --- session ----------------------------------------------------------------------------

    @staticmethod
    def _next(raw: str | None) -> str:
        """Only a path on this site, else ``/``: no open redirect. A browser drops tabs and
        newlines from a URL and reads a backslash as ``/``, so a tab between two slashes
        (``/%09/evil.example`` once decoded) or ``/\\evil.example`` would lead off-site:
        only plain URL characters are let through, and nothing that starts with two slashes
        once decoded."""
        if not raw or not _SAFE_PATH.fullmatch(raw):
            return "/"
        decoded = raw
        for _ in range(3):  # "%252F" is "%2F" once decoded, "/" twice
            decoded = unquote(decoded)
        decoded = "".join(decoded.split())  # every kind of whitespace, tabs and newlines
        if decoded.startswith(("//", "/\\")) or "\\" in decoded or urlsplit(raw).netloc:
            return "/"
        return raw

    async def login_form(self, request: web.Request) -> web.Response:
        configured = await asyncio.to_thread(self.credentials.get) is not None
        nxt = self._next(request.query.get("next"))
        return self._html(pages.login_page(self.site.site_name, nxt, configured=configured))

    async def login(self, request: web.Request) -> web.Response:
        password, raw_next = await login_fields(request)
        nxt = self._next(raw_next)
        operators = await asyncio.to_thread(self.credentials.get)
        if operators is None:
            return self._html(
                pages.login_page(self.site.site_name, nxt, configured=False), status=401
            )
        op = None
        if looks_like_password(password):  # no scrypt for what cannot be a credential
            try:
                op = await self._check_password(request, operators, password)
            except RateLimited as exc:
                page = pages.login_page(self.site.site_name, nxt, error=exc.message)
                resp = self._html(page, status=429)
                resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
                return resp
        if op is None:
            await asyncio.sleep(FAILED_LOGIN_DELAY)
            page = pages.login_page(self.site.site_name, nxt, error="Wrong password.")
            return self._html(page, status=401)
        ttl = self.settings.dashboard_session_ttl
        resp = _see_other(nxt)
        resp.set_cookie(
            self.cookie_name,
            op.new_session(ttl),
            max_age=int(ttl),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        resp = _see_other("/login")
        resp.del_cookie(self.cookie_name, path="/")
        return resp

    # --- JSON API ---------------------------------------------------------------------------

    async def overview_api(self, request: web.Request) -> web.Response:
        await self.api_guard(request)
        now, doc = await self._overview_doc()
        shown = {**doc, "html": pages.overview_content(doc, now)}  # the shared read unchanged
        return web.json_response(shown, headers={"Cache-Control": "no-store"})

    async def job_api(self, request: web.Request) -> web.Response:
        await self.api_guard(request)
        job_id = request.match_info["job_id"]
        state, offset, limit = job_paging(request)
        now = time.time()
        doc = await self.site.db(lambda s: views.job_page(s, job_id, now, state, offset, limit))
        doc["html"] = pages.job_content(doc, now)
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    async def events_api(self, request: web.Request) -> web.Response:
        await self.api_guard(request)
        job = request.query.get("job") or None
        after = query_count(request, "after", 0)
        limit = min(max(query_count(request, "limit", 500), 1), 10_000)
        if after:
            events = await self.site.db(lambda s: s.events(job, after, limit))
        else:
            events = await self.site.db(lambda s: s.recent_events(limit, job))
        return web.json_response(
            {"events": [views.event_json(e) for e in events]},
            headers={"Cache-Control": "no-store"},
        )

    # --- metrics and assets -----------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        if self.settings.metrics_auth:
            await self.api_guard(request)
        now = time.time()

        def collect(store: Store) -> str:
            totals = store.metrics_totals(metrics.TRANSFER_BOUNDS)
            return metrics.render(totals, store.list_servers(), now, store.client_totals())

        text = await self.site.db(collect)
        return web.Response(
            body=text.encode(),
            headers={"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"},
        )

    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})

    async def static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.static:
            raise web.HTTPNotFound()
        return web.Response(
            body=self.static[name],
            content_type=_STATIC_TYPES[name],
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**_SECURITY_HEADERS, "Location": location})


def setup(app: web.Application, site: SiteServer) -> Dashboard:
    """Add the dashboard, its API and ``/metrics`` to the site's application."""
    dashboard = Dashboard(site)
    dashboard.routes(app)
    for part in (
        OperatorApi,
        RolloutPages,
        ServerList,
        ServerPages,
        SearchPage,
        PackagePages,
        PackageActions,
    ):
        part(dashboard).routes(app)
    LiveStreams(dashboard, site.feed).routes(app)
    return dashboard
