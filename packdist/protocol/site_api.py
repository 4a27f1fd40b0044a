"""The agent's client of the site API: enrollment, heartbeats, chunk fetches.

A site may run as several workers (one PostgreSQL store); an agent given their URLs
(``agent serve --site URL1,URL2``) uses the one that answered last, and on a failure to
reach it moves on to the next at once. Only a failure to talk (connect, timeout, a worker
not ready) moves it on: an answer (a refused credential, a bad request) is the site's word.

The site directs how often an agent heartbeats (``interval`` in its answers), and may shed
a heartbeat under load (503 with ``Retry-After``); :class:`HeartbeatPace` is what the agent
makes of both, and of heartbeats that fail.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.errors import AuthError, Overloaded, PackdistError, RemoteError, TransferError
from packdist.http import HEARTBEAT, HOLDER_HEADER, STREAM, Frame, read_frames, request
from packdist.protocol.messages import CertificateAnswer, CertificateRequest, Heartbeat

log = logging.getLogger("packdist.agent")
T = TypeVar("T")


#: seconds between two heartbeats when the site does not say (a site older than ``interval``)
DEFAULT_INTERVAL = 2.0
MIN_INTERVAL = 1.0  # an interval the site names is taken within these bounds
#: 10 s: an agent that noticed its outage (its heartbeats failed) is heard from within
#: seconds of its return whatever its interval (RETRY_FIRST below); one that did not notice
#: (the outage fell between two heartbeats, and only the site's call to it failed) is found
#: by its next heartbeat, within this, or by the despooler's own retry, whichever comes first
MAX_INTERVAL = 10.0
#: after a failed heartbeat, the next comes this soon (doubling while failures go on, up to
#: RETRY_MAX, each jittered down to half): a server whose cable was pulled is heard from
#: within seconds of its return, whatever its interval
RETRY_FIRST = 1.0
RETRY_MAX = 4.0
#: a shed heartbeat waits the site's Retry-After, doubling while sheds go on, at most
#: SHED_MAX, plus up to half again as jitter: back to normal within a minute of the load
#: dropping
SHED_MAX = 30.0


class HeartbeatPace:
    """How long an agent waits before its next heartbeat, from what the last one met."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.interval = DEFAULT_INTERVAL
        self.failures = 0  # heartbeats in a row that did not reach the site
        self.sheds = 0  # heartbeats in a row the site shed
        self._rng = rng or random.Random()

    def answered(self, answer: dict[str, Any]) -> float:
        """The site took the heartbeat (or hello): its ``interval``, within bounds."""
        self.failures = self.sheds = 0
        said = answer.get("interval")
        if isinstance(said, int | float) and not isinstance(said, bool) and math.isfinite(said):
            self.interval = min(MAX_INTERVAL, max(MIN_INTERVAL, float(said)))
        else:
            self.interval = DEFAULT_INTERVAL
        return self.interval

    def shed(self, retry_after: float) -> float:
        """The site shed it, asking to wait ``retry_after`` seconds."""
        self.failures = 0
        self.sheds += 1
        wait = max(MIN_INTERVAL, retry_after) * 2 ** min(self.sheds - 1, 5)
        return float(min(SHED_MAX, wait) * self._rng.uniform(1.0, 1.5))

    def failed(self) -> float:
        """It did not reach the site (or the site failed): try again soon."""
        self.failures += 1
        wait = min(RETRY_MAX, RETRY_FIRST * 2 ** min(self.failures - 1, 5))
        return float(wait * self._rng.uniform(0.5, 1.0))


#: names of removed servers a heartbeat answer carries, at most (the newest removed first):
#: the answer every agent gets every few seconds stays small. Of more removals than this
#: within a peer credential's life (4 h), the oldest go unnamed: their credentials are then
#: refused only when they expire (a list fetched by version would lift this)
MAX_REVOKED = 1_000


def revoked_of(answer: dict[str, Any]) -> frozenset[str] | None:
    """The servers a heartbeat answer names as removed (None: it says nothing of them, an
    older site); peers refuse the peer credentials that name them."""
    said = answer.get("revoked", [])
    if not isinstance(said, list):
        return None
    return frozenset(n for n in said[:MAX_REVOKED] if isinstance(n, str))


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
    ) -> None:
        self.urls = site_urls(base_url) if isinstance(base_url, str) else list(base_url)
        if not self.urls:
            raise ValueError("no site URL")
        self._current = 0
        self._auth = {"Authorization": f"Bearer {token}", HOLDER_HEADER: "site"}
        self._session = session
        self._liveness = liveness  # a fresh connection per call: enrollment

    @property
    def base_url(self) -> str:
        """The worker in use (the one that answered last)."""
        return self.urls[self._current]

    def _next(self, failed: str, exc: PackdistError) -> None:
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

    async def chunks(
        self, digests: list[Digest], bases: dict[Digest, list[Digest]] | None = None
    ) -> AsyncGenerator[Frame, None]:
        """Stream the requested chunks as frames (not decoded nor verified: the caller
        decodes each, against the ``bases`` it offered, and checks every digest).

        A worker that cannot be reached before the first frame is passed over for the next;
        one that fails mid-stream ends this stream (the caller asks again for what is
        missing, and the next request goes to another worker).

        An async generator: close it (``contextlib.aclosing``) when stopping early, so the
        connection is released at once rather than whenever the generator is collected.
        """
        body: dict[str, Any] = {
            "digests": [d.hex for d in digests],
            "accept": [e.label for e in Encoding],
        }
        if bases:
            body["bases"] = {d.hex: [b.hex for b in bs] for d, bs in bases.items()}
        last: PackdistError | None = None
        for _ in range(len(self.urls)):
            url = f"{self.base_url}/v1/chunks"
            started = False
            try:
                async with request(
                    self._session, "POST", url, headers=self._auth, json=body, timeouts=STREAM
                ) as resp:
                    async for frame in read_frames(resp.content, url):
                        started = True
                        yield frame
                return
            except PackdistError as exc:
                if not _unreachable(exc):
                    raise
                self._next(self.base_url, exc)
                if started:
                    raise
                last = exc
        assert last is not None
        raise last
