"""HTTP plumbing shared by the site and the agents: timeouts, error translation, framing.

Every outgoing call has a timeout. Driver errors are translated here, at the boundary, into
:mod:`packdist.errors` types whose message says the real cause in words ("connect timeout to
http://10.0.0.12:8700"), the original kept as ``__cause__``.

Chunk streams
-------------

``POST /v1/chunks`` asks the site for a batch of chunks::

    {"digests": [hex, ...],                 the chunks, in the order they should come
     "accept": ["raw", "zstd", "zstd-base"], the encodings the agent decodes (raw always)
     "bases": {hex: [hex, hex], ...}}        optional: for a chunk, up to 6 chunks the
                                            agent holds (an earlier version's) to encode
                                            it against, in that order

The answer (``application/x-packdist-chunks``) is a sequence of frames, one per chunk, in
the order asked::

    digest (32 bytes) | encoding (1) | size (4, big-endian) | length (4) | payload (length)

``encoding`` is 0 raw, 1 zstd, 2 zstd against the bases named for that chunk (see
:mod:`packdist.core.codec`); ``size`` is the chunk's own size, ``length`` the payload's.
The site picks per chunk: against a base if it holds the bases and that pays, else zstd if
it pays, else raw. An error frame (encoding ``0xFF``, zero digest, ``size`` 0) carries a
UTF-8 message as its payload and ends the stream: the agent raises it as a RemoteError.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from packdist.core.digest import DIGEST_SIZE, Digest
from packdist.core.tls import holder as tls_holder
from packdist.errors import (
    AuthError,
    BadSignature,
    Busy,
    ConnectError,
    DecodeError,
    DiskFull,
    ErrorKind,
    Forbidden,
    HealthCheckFailed,
    NotFound,
    Overloaded,
    PackdistError,
    RateLimited,
    RemoteError,
    RemoteTimeout,
    TransferError,
    UserError,
    kind_named,
)

T = TypeVar("T")
_log = logging.getLogger("packdist.http")


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for each phase of a call."""

    connect: float = 3.0
    read: float = 10.0  # between two reads of a response
    total: float | None = 30.0  # a whole request/response; None for long streams

    def client(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total, sock_connect=self.connect, connect=self.connect, sock_read=self.read
        )


CONTROL = Timeouts()
STREAM = Timeouts(connect=3.0, read=15.0, total=None)
HEARTBEAT = Timeouts(connect=2.0, read=3.0, total=4.0)


#: who a request expects to answer it: ``site`` (a site's certificate) or ``server/NAME``
#: (that server's). Checked by the session once the TLS handshake is done, before a byte of
#: the request is sent: a certificate of the site's authority and for the host dialled is
#: not enough, since every server holds one (an agent on the site's machine must not pass
#: for the site, nor one server for another at a reused address).
HOLDER_HEADER = "X-Packdist-Holder"
#: what an agent says of itself to its site, for an operator's sake when its token is
#: refused: the server it was enrolled as (if it was), and the port it serves on
CLAIM_HEADER = "X-Packdist-Server"
PORT_HEADER = "X-Packdist-Port"


class WrongHolder(AuthError):
    """The other end's certificate is good but not of whom the request was for."""


def holds(held: str | None, expected: str) -> bool:
    """Whether a certificate's holder ``held`` is ``expected`` (``site``: any site's)."""
    if expected == "site":
        return held is not None and held.startswith("site/")
    return held == expected


def presented(request: web.Request) -> str | None:
    """The holder of the certificate the client presented over TLS (None: it presented
    none, or the request came in clear)."""
    transport = request.transport if request.secure else None
    return tls_holder(transport.get_extra_info("peercert")) if transport is not None else None


class _HolderCheckingConnector(aiohttp.TCPConnector):
    """A connector that checks :data:`HOLDER_HEADER` on every new ``https://`` connection."""

    async def _wrap_create_connection(
        self, *args: Any, req: aiohttp.ClientRequest, **kwargs: Any
    ) -> Any:
        transport, protocol = await super()._wrap_create_connection(*args, req=req, **kwargs)
        expected = req.headers.get(HOLDER_HEADER)
        if expected and req.url.scheme == "https":
            held = tls_holder(transport.get_extra_info("peercert"))
            if not holds(held, expected):
                transport.close()
                where = f"{req.url.host}:{req.url.port}"
                raise WrongHolder(
                    f"TLS: {where} holds the certificate of {held or 'no packdist holder'},"
                    f" not of {expected}: refusing it"
                )
        return transport, protocol


def new_session(*, tls: ssl.SSLContext, fresh_connections: bool = False) -> aiohttp.ClientSession:
    """A client session. ``tls``: what ``https://`` URLs are dialled with (``core/tls.py``'s
    client context, trusting the site's authority only; there is no default, so no session
    ever falls back to the system's trust store); the scheme of each URL decides, an
    ``http://`` one goes in clear. ``fresh_connections``: a new TCP connection per request,
    for liveness calls that must not wait on a pooled connection that died with a cable."""
    return aiohttp.ClientSession(
        connector=_HolderCheckingConnector(
            limit=0,
            ttl_dns_cache=60,
            enable_cleanup_closed=True,
            force_close=fresh_connections,
            ssl=tls,
        ),
        raise_for_status=False,
    )


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused by {peer}",
    errno.EHOSTUNREACH: "host unreachable: {peer}",
    errno.ENETUNREACH: "network unreachable: {peer}",
    errno.ECONNRESET: "connection reset by {peer}",
    errno.ETIMEDOUT: "connect timeout to {peer}",
}


def peer(url: str) -> str:
    """``scheme://host:port`` of a URL, the way operators name a server."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url


def translate(exc: BaseException, url: str) -> PackdistError:
    """A driver/OS error as a packdist error naming the cause and the peer."""
    if isinstance(exc, PackdistError):
        return exc
    url = peer(url)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return RemoteTimeout(f"connect timeout to {url}")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return RemoteTimeout(f"read timeout from {url} (no answer)")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return RemoteTimeout(f"timeout talking to {url}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
        return ConnectError(f"TLS: {url} is not verified by the site's authority ({why})")
    if isinstance(exc, aiohttp.ClientSSLError):
        why = getattr(exc.os_error, "reason", None) or getattr(exc.os_error, "strerror", None)
        return ConnectError(
            f"TLS handshake with {url} failed ({why or type(exc.os_error).__name__})"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno if exc.os_error else None
        if code in _ERRNO_WORDS:
            return ConnectError(_ERRNO_WORDS[code].format(peer=url))
        reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)
        return ConnectError(f"cannot connect to {url}: {reason}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return TransferError(f"connection to {url} dropped mid-transfer")
    if isinstance(exc, aiohttp.ClientError):
        return TransferError(f"transfer with {url} failed: {exc}")
    if isinstance(exc, OSError):
        return os_error(exc, url)
    return TransferError(f"transfer with {url} failed: {exc!r}")


def os_error(exc: OSError, where: str) -> PackdistError:
    """An OS error talking to ``where`` (``scheme://host:port``) as a packdist error."""
    if exc.errno in _ERRNO_WORDS:
        return ConnectError(_ERRNO_WORDS[exc.errno].format(peer=where))
    return TransferError(f"network error with {where}: {exc.strerror or exc}")


async def raise_for_answer(resp: aiohttp.ClientResponse, url: str) -> None:
    if resp.status >= 400:
        raise answer_error(resp.status, await resp.read(), resp.headers.get("Retry-After"), url)


def answer_error(status: int, body: bytes, retry_after: str | None, url: str) -> PackdistError:
    """The packdist error that an error answer (``status`` of 400 or more, its ``body``
    and ``Retry-After`` header) from ``url`` means, whichever client read it."""
    kind = ErrorKind.TRANSIENT
    try:
        doc = json.loads(body)
        detail = str(doc.get("error", doc))
        kind = kind_named(doc.get("kind"))
    except (ValueError, AttributeError):  # a non-JSON error page
        detail = body[:200].decode(errors="replace")
    url = peer(url)
    if status in (401, 403):
        return AuthError(f"{url} refused the credential: {detail}")
    if status == 503:
        seconds = retry_after_seconds(retry_after)
        if seconds is not None:
            return Overloaded(f"{url} is busy: {detail}", seconds)
        return RemoteError(f"{url} not ready: {detail}", status=503)
    return RemoteError(f"{url} answered {status}: {detail}", status=status, kind=kind)


def retry_after_seconds(header: str | None) -> float | None:
    """A Retry-After header given in seconds (an HTTP date, or garbage: None)."""
    try:
        value = float(header) if header is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


@asynccontextmanager
async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    timeouts: Timeouts = CONTROL,
    **kwargs: Any,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """An HTTP request whose failures are packdist errors; non-2xx answers raise."""
    try:
        async with session.request(method, url, timeout=timeouts.client(), **kwargs) as resp:
            await raise_for_answer(resp, url)
            yield resp
    except PackdistError:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise translate(exc, url) from exc


def error_response(status: int, message: str, kind: ErrorKind | None = None) -> web.Response:
    """``{"error": words, "kind": kind}``: the kind lets the caller's retry policy decide."""
    body = {"error": message} if kind is None else {"error": message, "kind": kind.value}
    return web.json_response(body, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_of(exc: PackdistError) -> int:
    """The HTTP status answering a request whose handler raised ``exc``: 4xx for what the
    request got wrong (a credential, a name, a signature that does not verify), 5xx for what
    went wrong here or further on."""
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, RateLimited):
        return 429
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, Busy):
        return 409
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, UserError | BadSignature | DecodeError):
        return 400
    if isinstance(exc, DiskFull):
        return 507
    if isinstance(exc, HealthCheckFailed):
        return 422
    if isinstance(exc, RemoteTimeout):
        return 504
    if isinstance(exc, TransferError):
        return 502
    return 500


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn errors raised by handlers into JSON error answers.

    A packdist error is answered with its status and message and logged as one line (4xx at
    debug level: a flood of bad requests must not flood the log). Anything else is a bug:
    500 with no detail, logged with its traceback."""
    try:
        return await handler(request)
    except PackdistError as exc:
        status = status_of(exc)
        level = logging.DEBUG if status < 500 else logging.WARNING
        _log.log(level, "%d %s %s: %s", status, request.method, request.path, exc.message)
        resp = error_response(status, exc.message, exc.kind)
        if isinstance(exc, RateLimited):
            resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return resp
    except web.HTTPException:
        raise
    except ConnectionError:
        if request.transport is not None and not request.transport.is_closing():
            raise  # not this request's client going away: some other connection, a bug
        _log.debug("%s %s: the client went away", request.method, request.path)
        return error_response(400, "connection lost")  # nobody reads it; aiohttp drops it
    except Exception:
        _log.exception("%s %s failed (a bug)", request.method, request.path)
        return error_response(500, "internal error (the server's log has the details)")


# --- chunk stream framing ----------------------------------------------------------------
# See the module docstring ("Chunk streams").

HEADER_MARKS = struct.Struct(">BII")  # encoding, chunk size, payload length; after the digest
HEADER_SIZE = DIGEST_SIZE + HEADER_MARKS.size
ERROR_MARK = 0xFF  # in the encoding byte: an error frame, its payload a UTF-8 message
#: in the encoding byte of a peer's stream: "not here (yet)", an empty payload (see
#: packdist.agent.sources; packdist fetch reads agents' streams too)
MISSING = 0xFE
MAX_PAYLOAD = 64 * 1024 * 1024  # no frame is larger (chunks are at most a few MiB)
MAX_ERROR_BYTES = 2000  # of an error frame's message, what is kept


@dataclass(frozen=True)
class Frame:
    """One chunk as received: not yet decoded nor verified."""

    digest: Digest
    encoding: int  # a :class:`packdist.core.codec.Encoding` value
    size: int  # the chunk's size, decoded
    payload: bytes | memoryview  # a view: of a buffer the stream reuses (chunk_stream.py)

    @property
    def wire_bytes(self) -> int:
        """What this frame took on the wire, header included."""
        return HEADER_SIZE + len(self.payload)


def frame_header(digest: Digest, encoding: int, size: int, length: int) -> bytes:
    return digest.raw + HEADER_MARKS.pack(encoding, size, length)


def error_frame(message: str) -> bytes:
    data = message.encode()
    return b"\0" * DIGEST_SIZE + HEADER_MARKS.pack(ERROR_MARK, 0, len(data)) + data
