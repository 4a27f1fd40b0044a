"""The agent's client of the site API: enrollment, heartbeats, chunk fetches.

A site may run as several workers (one PostgreSQL store); an agent given their URLs
(``agent serve --site URL1,URL2``) uses the one that answered last, and on a failure to
reach it moves on to the next at once. Only a failure to talk (connect, timeout, a worker
not ready) moves it on: an answer (a refused credential, a bad request) is the site's word.

The site directs how often an agent heartbeats (``interval`` in its answers), and may shed
a heartbeat under load (503 with ``Retry-After``); :mod:`packdist.protocol.pace` says what
the agent makes of both, and of heartbeats that fail.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp

from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.errors import AuthError, Overloaded, PackdistError, RemoteError, TransferError
from packdist.http import CLAIM_HEADER, HEARTBEAT, HOLDER_HEADER, PORT_HEADER, Frame, request
from packdist.protocol.chunk_stream import ChunkStreams, StreamStop
from packdist.protocol.messages import CertificateAnswer, CertificateRequest, Heartbeat
from packdist.protocol.pace import (  # re-exported: their home was this module
    DEFAULT_INTERVAL,
    MAX_INTERVAL,
    MAX_REVOKED,
    MIN_INTERVAL,
    RETRY_FIRST,
    RETRY_MAX,
    SHED_MAX,
    HeartbeatPace,
    revoked_of,
)

log = logging.getLogger("packdist.agent")
T = TypeVar("T")


MAX_AUTHORITY = 16 * 1024  # bytes of the authority's PEM, at most (it is under 1 KiB)


def site_urls(text: str) -> list[str]:
    """``URL1,URL2`` as a list (trailing slashes dropped, duplicates once)."""
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    return list(dict.fromkeys(urls))


def _unreachable(exc: PackdistError) -> bool:
    """True for a failure to talk to this worker (another may answer)."""
    if isinstance(exc, AuthError | Overloaded):  # shed: the same worker, after Retry-After
        return False
    if isinstance(exc, RemoteError):
        return exc.status is None or exc.status >= 500
    return isinstance(exc, TransferError)


class SiteClient:
    def __init__(
        self,
        base_url: str | list[str],
        token: str,
        session: aiohttp.ClientSession,
        liveness: aiohttp.ClientSession,
        streams: ChunkStreams | None = None,
    ) -> None:
        self.urls = site_urls(base_url) if isinstance(base_url, str) else list(base_url)
        if not self.urls:
            raise ValueError("no site URL")
        self._current = 0
        self._moving = threading.Lock()
        self._auth = {"Authorization": f"Bearer {token}", HOLDER_HEADER: "site"}
        self._session = session
        self._liveness = liveness  # a fresh connection per call: enrollment
        self._streams = streams  # chunk streams, read in worker threads

    def say_who(self, server: str | None, port: int | None) -> None:
        """Say with each request the server this agent was enrolled as and the port it
        serves on: when its token is refused, the site can tell the operator whose it is."""
        for header, value in ((CLAIM_HEADER, server), (PORT_HEADER, port)):
            if value is None:
                self._auth.pop(header, None)
            else:
                self._auth[header] = str(value)

    @property
    def base_url(self) -> str:
        """The worker in use (the one that answered last)."""
        return self.urls[self._current]

    def _next(self, failed: str, exc: PackdistError) -> None:
        """Move on from ``failed``, unless another call already did (streams fail in worker
        threads at once: only the first moves)."""
        with self._moving:
            if len(self.urls) > 1 and self.urls[self._current] == failed:
                self._current = (self._current + 1) % len(self.urls)
                log.info("site worker %s: %s; trying %s", failed, exc.message, self.base_url)

    async def _any(self, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(url)`` on the worker in use, then on each other one until one answers."""
        last: PackdistError | None = None
        for _ in range(len(self.urls)):
            url = self.base_url
            try:
                return await call(url)
            except PackdistError as exc:
                if not _unreachable(exc):
                    raise
                last = exc
                self._next(url, exc)
        assert last is not None
        raise last

    async def _post(
        self,
        path: str,
        payload: dict[str, Any] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> dict[str, Any]:
        async def call(url: str) -> dict[str, Any]:
            async with request(
                session or self._liveness,
                "POST",
                f"{url}{path}",
                headers=self._auth,
                json=payload,
                timeouts=HEARTBEAT,
            ) as resp:
                data: dict[str, Any] = await resp.json()
                return data

        return await self._any(call)

    async def authority(self) -> bytes:
        """The site's certificate authority (PEM), fetched without verifying the site and
        without the token: what the caller must check against its pinned fingerprint before
        it trusts the site with anything (``agent/transport.py``)."""

        async def call(url: str) -> bytes:
            async with request(
                self._liveness,
                "GET",
                f"{url}/v1/site/authority",
                timeouts=HEARTBEAT,
                ssl=False,  # nothing is trusted yet: the fingerprint check is the proof
                allow_redirects=False,  # the site's own answer, or none
            ) as resp:
                return await resp.content.read(MAX_AUTHORITY + 1)

        return await self._any(call)

    async def hello(self) -> dict[str, Any]:
        """Enroll: learn our server name, the site's public key and the heartbeat interval."""
        return await self._post("/v1/agent/hello")

    async def certificate(self, asked: CertificateRequest) -> CertificateAnswer:
        """A certificate for this agent's key, signed by the site's authority."""
        return CertificateAnswer.from_json(
            await self._post("/v1/agent/certificate", asked.to_json())
        )

    async def heartbeat(self, beat: Heartbeat) -> dict[str, Any]:
        """On a kept-alive connection: a heartbeat every few seconds costs the site no TCP
        handshake. A connection that died (a cable pulled) fails this call within its short
        timeout and is dropped; the next heartbeat opens a new one."""
        return await self._post("/v1/agent/heartbeat", beat.to_json(), self._session)

    def chunks(
        self,
        digests: list[Digest],
        bases: dict[Digest, list[Digest]] | None = None,
        stop: StreamStop | None = None,
    ) -> Iterator[Frame]:
        """Stream the requested chunks as frames (not decoded nor verified: the caller
        decodes each, against the ``bases`` it offered, and checks every digest). Blocking:
        a worker thread reads the stream (:mod:`packdist.protocol.chunk_stream`), and each
        frame's payload is valid until the next is asked for.

        A worker that cannot be reached before the first frame is passed over for the next;
        one that fails mid-stream ends this stream (the caller asks again for what is
        missing, and the next request goes to another worker). ``stop`` ends it from
        another thread.
        """
        if self._streams is None:
            raise TransferError("this site client was made without chunk streams")
        body: dict[str, Any] = {
            "digests": [d.hex for d in digests],
            "accept": [e.label for e in Encoding],
        }
        if bases:
            body["bases"] = {d.hex: [b.hex for b in bs] for d, bs in bases.items()}
        last: PackdistError | None = None
        for _ in range(len(self.urls)):
            worker = self.base_url  # the one this stream tried (others move on at once)
            url = f"{worker}/v1/chunks"
            started = False
            try:
                for frame in self._streams.post(url, self._auth, body, stop):
                    started = True
                    yield frame
                return
            except PackdistError as exc:
                if not _unreachable(exc) or (stop is not None and stop.stopped):
                    raise
                self._next(worker, exc)
                if started:
                    raise
                last = exc
        assert last is not None
        raise last


__all__ = [
    "DEFAULT_INTERVAL",
    "MAX_INTERVAL",
    "MAX_REVOKED",
    "MIN_INTERVAL",
    "RETRY_FIRST",
    "RETRY_MAX",
    "SHED_MAX",
    "HeartbeatPace",
    "SiteClient",
    "revoked_of",
    "site_urls",
]
