"""Serving HTTP: what every packdist server (the site, each agent) bounds before its routes
see a request, on a network where anything can arrive.

* **Headers.** A connection must deliver its first request's line and headers within
  :data:`HEADER_TIMEOUT` of connecting: a client trickling them a byte a second is dropped.
  On a kept-alive connection, the end of one answer to the headers of the next is bounded by
  :data:`IDLE_TIMEOUT` (aiohttp's keep-alive timer, which also closes idle connections).
* **Bodies.** Each route reads at most its own limit (:func:`guard`): a Content-Length above
  it is answered 413 before a byte is read, and a body sent without one stops at the limit.
  A body must have arrived within :data:`BODY_TIMEOUT` plus a second per
  :data:`MIN_BODY_RATE` bytes of its length, or the connection is dropped.
* **Logs.** A request aiohttp cannot parse is logged as one INFO line, never with a
  traceback: a traceback in a packdist log means a bug.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from packdist.core.names import split_listen
from packdist.errors import UserError
from packdist.http import error_response

log = logging.getLogger("packdist.http")

HEADER_TIMEOUT = 10.0  # seconds from connecting to a first request's complete headers
#: seconds a kept-alive connection may wait for its next request (and its headers); longer
#: than the 15 s aiohttp's client pool keeps a connection, so an agent never picks one the
#: server is about to close
IDLE_TIMEOUT = 30.0
BODY_TIMEOUT = 20.0  # seconds for any body to arrive, plus its length at MIN_BODY_RATE
MIN_BODY_RATE = 64 * 1024  # bytes per second: below this, a long body is dropped
LINGER = 2.0  # seconds spent discarding a body a handler did not read, before closing

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with a deadline for its first request's
    headers (aiohttp has none: a client sending nothing, or a byte now and then, would hold
    the connection for good). ``open`` counts the connections of this process."""

    open = 0

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports act as asyncio.Transport without subclassing it
        self.transport = transport  # type: ignore[assignment]
        _Connection.open += 1
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)
        self.inner.connection_made(transport)

    def headers_arrived(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            peer = self.transport.get_extra_info("peername")
            log.info("dropped %s: no complete request within %gs", _addr(peer), self.timeout)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        _Connection.open -= 1
        self.headers_arrived()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def open_connections() -> int:
    """Connections this process's servers hold now (each one a file descriptor)."""
    return _Connection.open


def _addr(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "a client"


def route_key(request: web.Request) -> str:
    """``METHOD /canonical/{path}`` of the route a request matched ("" if none)."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical}" if resource is not None else ""


def guard(limits: Mapping[str, int], default: int) -> Middleware:
    """The outermost middleware of a packdist server: ends the connection's header deadline,
    and bounds the body of each route: ``limits`` maps a :func:`route_key` to the bytes its
    body may hold, ``default`` for every other route."""

    @web.middleware
    async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = request.transport.get_protocol() if request.transport is not None else None
        if isinstance(conn, _Connection):
            conn.headers_arrived()
        if not request.body_exists:
            return await handler(request)
        limit = limits.get(route_key(request), default)
        length = request.content_length
        if length is not None and length > limit:
            resp = error_response(413, f"request body too large: at most {limit} bytes here")
            resp.force_close()  # what follows is a body nobody will read
            return resp
        if limit != request.client_max_size:  # a new Request costs: only when it differs
            request = request.clone(client_max_size=limit)
        deadline = BODY_TIMEOUT + (length if length is not None else limit) / MIN_BODY_RATE
        timer = asyncio.get_running_loop().call_later(deadline, _body_late, request, deadline)
        try:
            return await handler(request)
        finally:
            timer.cancel()

    return guard_middleware


def _body_late(request: web.Request, deadline: float) -> None:
    """The body of ``request`` had ``deadline`` seconds: if it has not all arrived, drop
    the connection (the handler waiting on it sees the connection reset)."""
    if request.content.is_eof() or request.transport is None:
        return
    log.info("dropped %s: request body not received within %.0fs", request.remote, deadline)
    request.transport.abort()


class _OneLine(logging.Filter):
    """aiohttp logs a request it cannot parse as an ERROR with a traceback; that is input,
    not a bug: one INFO line saying what was wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            who = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            words = " ".join(str(exc.message).split())[:200]
            record.msg, record.args = "refused a malformed request from %s: %s", (who, words)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_server_log = logging.getLogger("packdist.http.server")
_server_log.addFilter(_OneLine())


@asynccontextmanager
async def serving(
    app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve ``app`` on ``host:port`` with the bounds above until the block ends; yields
    the port listened on (``port`` 0: one the kernel chose). With ``tls``, HTTPS only: the
    handshake has a deadline of its own, as long as the header deadline that follows it."""
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=IDLE_TIMEOUT,
        lingering_time=LINGER,
        logger=_server_log,
    )
    await runner.setup()
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(
            lambda: _Connection(server(), HEADER_TIMEOUT),
            host,
            port,
            reuse_address=True,
            ssl=tls,
            ssl_handshake_timeout=HEADER_TIMEOUT if tls is not None else None,
        )
    except BaseException:
        await runner.cleanup()
        raise
    try:
        yield int(listener.sockets[0].getsockname()[1])
    finally:
        listener.close()
        await runner.cleanup()


async def serve_until_stopped(
    app: web.Application,
    listen: str,
    tls: ssl.SSLContext | None = None,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on ``listen`` (HTTPS with ``tls``) until SIGTERM or SIGINT;
    ``on_listening`` once the address is bound (what tells the user it listens)."""
    try:
        host, port = split_listen(listen)
    except ValueError as exc:
        raise UserError(f"--listen {listen!r}: {exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with serving(app, host, port, tls):
            log.info("listening on %s (%s)", listen, "https" if tls is not None else "plain http")
            if on_listening is not None:
                on_listening()
            await stop.wait()
    except OSError as exc:  # asyncio's words carry the address again: the system's alone
        words = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise UserError(f"cannot listen on {listen}: {words}") from exc
