"""Live pages pushed to the browser: ``GET /api/live?src=/api/…`` is a stream of
server-sent events, each the rendered live part of the page ``src`` names, sent when it
changed.

The site learns that something changed without asking: every commit to its SQLite store,
by this process or a command line, is heard through the database file (the despooler's
own wake-up, :func:`packdist.store.wakeup.follow`); on PostgreSQL, the site's notify
channel; and the site's own serve loop bumps the feed after each batch it writes. Each
change re-renders every open stream's page once (several changes within
:data:`COALESCE` seconds, once), and only a page whose HTML differs is sent. A stream
with nothing new says so every :data:`KEEPALIVE` seconds (an SSE comment), and renders
anyway every :data:`SAFETY_RENDER` seconds: a page's words age ("12s ago") and a change
on another machine (NFS) is not heard.

``src`` must be one of the dashboard's own JSON routes (``/api/…``, not this one), read
with the caller's own credential, as a direct request to it would be. The browser falls
back to asking every 1.5 s where it has no ``EventSource``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web
from yarl import URL

from packdist.errors import PackdistError, UserError
from packdist.http import status_of

if TYPE_CHECKING:
    from packdist.site.dashboard import Dashboard

log = logging.getLogger(__name__)

COALESCE = 0.3  # seconds: changes this close together re-render once
KEEPALIVE = 15.0  # seconds between comments on a stream with nothing new
SAFETY_RENDER = 5.0  # seconds: render anyway this often (ages in words, unheard changes)
MAX_STREAMS = 200  # open live streams at once; past it, the browser asks instead
MAX_SRC = 2000


class ChangeFeed:
    """A counter of changes that streams wait on (bumped from any thread)."""

    def __init__(self) -> None:
        self.version = 0
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def bump(self) -> None:
        self.version += 1
        self._changed.set()

    def bump_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.bump)

    async def wait(self, seen: int, timeout: float) -> None:
        """Until the version is past ``seen``, or ``timeout`` seconds."""
        while self.version == seen:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
            if self.version == seen:
                return  # timed out


def check_src(src: str) -> str:
    if not src or len(src) > MAX_SRC:
        raise UserError("src must name a page's JSON route (/api/...)")
    url = URL(src)
    if url.is_absolute() or not url.path.startswith("/api/") or url.path == "/api/live":
        raise UserError("src must name one of this site's /api/ pages")
    return src


class LiveStreams:
    def __init__(self, dashboard: Dashboard, feed: ChangeFeed) -> None:
        self.dashboard = dashboard
        self.feed = feed
        self.open = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/live", self.stream)

    async def _render(self, request: web.Request, src: str) -> str:
        """The live HTML of ``src``, as a request to it with the caller's credential."""
        sub = request.clone(rel_url=URL(src))
        match = await request.app.router.resolve(sub)
        if match.http_exception is not None:
            raise match.http_exception
        sub._match_info = match  # what aiohttp's own dispatch does before a handler
        answer = await match.handler(sub)
        if not isinstance(answer, web.Response) or answer.body is None:
            raise UserError(f"{src} is not a live page")
        assert isinstance(answer.body, bytes)
        html = json.loads(answer.body).get("html")
        if not isinstance(html, str):
            raise UserError(f"{src} is not a live page")
        return html

    async def stream(self, request: web.Request) -> web.StreamResponse:
        await self.dashboard.api_guard(request)
        src = check_src(request.query.get("src", ""))
        if self.open >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text="too many live pages open: asking instead")
        first = await self._render(request, src)  # a bad src fails here, as a plain error
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # a proxy in front must not hold the events
            }
        )
        await response.prepare(request)
        self.open += 1
        try:
            last, written = first, time.monotonic()
            await response.write(_event(first))
            while True:
                await self.feed.wait(self.feed.version, SAFETY_RENDER)
                await asyncio.sleep(COALESCE)
                html = await self._render(request, src)
                if html != last:
                    await response.write(_event(html))
                    last, written = html, time.monotonic()
                elif time.monotonic() - written >= KEEPALIVE:
                    await response.write(b": nothing new\n\n")
                    written = time.monotonic()
        except ConnectionResetError:
            pass  # the browser left
        except (web.HTTPException, PackdistError) as exc:  # the page went away, or the
            # caller's credential did (logged out, removed): the browser stops and asks
            status = exc.status if isinstance(exc, web.HTTPException) else status_of(exc)
            with contextlib.suppress(ConnectionResetError):
                await response.write(f"event: gone\ndata: {status}\n\n".encode())
        finally:
            self.open -= 1
        return response


def _event(html: str) -> bytes:
    return f"data: {json.dumps(html)}\n\n".encode()
