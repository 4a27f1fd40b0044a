"""The site server: the API agents talk to, and the despooler, in one process.

Routes (JSON unless noted):

* ``GET /healthz`` — anyone; 200 once the site is ready.
* ``GET /v1/site/authority`` — anyone: the site's certificate authority (PEM), which an
  agent checks against its token's fingerprint before it trusts the site (the discovery
  step: fetched over TLS without verification, then pinned).
* ``POST /v1/agent/hello`` — enrollment token: the server's name and the site public key.
* ``POST /v1/agent/certificate`` — enrollment token: a certificate for the agent's key,
  signed by the site's authority (see :mod:`packdist.site.enrollment`).
* ``POST /v1/agent/heartbeat`` — enrollment token: liveness, free disk, installed ids.
  Both answers carry ``interval``, the seconds the agent waits before its next heartbeat;
  under overload both may be shed: ``503`` with ``Retry-After`` (see
  :mod:`packdist.site.cadence`).
* ``POST /v1/chunks`` — enrollment token: a framed stream of the requested chunks, each
  raw, zstd or zstd against a base the agent holds (see :mod:`packdist.http`).
* ``GET /v1/chunks/{digest}`` — enrollment token: one chunk, raw.
* ``GET /v1/packages/{id}/manifest`` — enrollment token: canonical manifest, signature in
  the ``X-Packdist-Signature`` header.
* the dashboard, its JSON API and ``/metrics`` — operator credential; see
  :mod:`packdist.site.dashboard`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from packdist.config import Settings
from packdist.core import codec
from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.core.names import split_listen
from packdist.despooler import Despooler, PeerSettings
from packdist.errors import NotFound, PackdistError, UserError
from packdist.http import (
    error_frame,
    error_middleware,
    frame_header,
    new_session,
)
from packdist.process import quiet_accept_errors, raise_open_files_limit, settle_collector
from packdist.protocol.messages import Heartbeat
from packdist.ratelimit import Bucket
from packdist.serving import guard, serve_until_stopped
from packdist.site import dashboard
from packdist.site.beats import Beats, json_body
from packdist.site.enrollment import CertificateDesk
from packdist.site.home import SiteHome
from packdist.site.serving_tls import SiteTLS, dialing_context, renewal_loop
from packdist.site.store_runner import StoreRunner
from packdist.site.validation import validation_loop
from packdist.store.base import ServerRecord

log = logging.getLogger("packdist.site")

MAX_BATCH = 4096
READ_AHEAD = 3  # groups of chunks read ahead of the network
GROUP_CHUNKS = 32  # chunks framed into one write
WRITE_TIMEOUT = 15.0  # an agent that takes no bytes of a chunk stream this long is dropped
#: above this rate (bytes/s at which an agent takes a stream) plain zstd costs more time than
#: it saves, and chunks go raw (deltas against bases still go encoded); below half of it,
#: compression comes back. zstd level 1 runs at ~200-300 MB/s per core on text.
FAST_LINK = 250e6
RATE_SAMPLE = 8 * 1024 * 1024  # bytes written before the rate is trusted (socket buffers
# take the first few MiB at once, whatever the link)
#: base chunk bytes one chunk request may make the site read (distinct bases; about 4x the
#: largest batch an agent asks for in one request)
BASE_BUDGET = 128 * 1024 * 1024
SEND_SLICE = 256 * 1024  # bytes written (and taken from the upload limit) at a time
#: bytes a request body may hold: heartbeats (up to MAX_INSTALLED ids) and chunk requests
#: (up to MAX_BATCH digests with their bases) are the large ones; every other route takes a
#: small body or none (the login form has its own, smaller limit)
LARGE_BODY = 16 * 1024 * 1024
SMALL_BODY = 64 * 1024


class SiteServer:
    def __init__(
        self, home: SiteHome, max_in_flight: int = 64, settings: Settings | None = None
    ) -> None:
        self.home = home
        self.settings = settings or Settings()
        self.upload = Bucket(self.settings.transfer_upload_limit)
        self.library = home.library
        self.key = home.signing_key()
        self.db = StoreRunner(home.store())
        self.max_in_flight = max_in_flight
        self.site_name = ""
        self._despooler: Despooler | None = None
        self.beats = Beats(self.db)  # heartbeats: interval, liveness, shedding
        self.certificates = CertificateDesk(home.authority(), self.beats)
        self.beats.admission.busy = self._moving_packages
        self.cadence, self.admission, self.liveness = (
            self.beats.cadence,
            self.beats.admission,
            self.beats.liveness,
        )

    def _moving_packages(self) -> bool:
        """Whether the despooler has attempts under way (heartbeats give way to them)."""
        return self._despooler is not None and bool(self._despooler.in_flight)

    @property
    def despooler(self) -> Despooler:
        assert self._despooler is not None, "the site is not running"
        return self._despooler

    def app(self) -> web.Application:
        limits = {
            "POST /v1/agent/heartbeat": LARGE_BODY,
            "POST /v1/chunks": LARGE_BODY,
            "POST /login": dashboard.LOGIN_BODY,
        }
        app = web.Application(
            middlewares=[guard(limits, SMALL_BODY), error_middleware], client_max_size=LARGE_BODY
        )
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/v1/site/authority", self.authority)
        app.router.add_post("/v1/agent/hello", self.hello)
        app.router.add_post("/v1/agent/certificate", self.certificates.certificate)
        app.router.add_post("/v1/agent/heartbeat", self.heartbeat)
        app.router.add_post("/v1/chunks", self.chunks)
        app.router.add_get("/v1/chunks/{digest}", self.chunk)
        app.router.add_get("/v1/packages/{package_id}/manifest", self.manifest)
        dashboard.setup(app, self)
        return app

    async def _agent(self, request: web.Request) -> ServerRecord:
        return await self.beats.agent(request)

    # --- routes ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "site": self.site_name})

    async def authority(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.certificates.authority.pem, content_type="application/x-pem-file"
        )

    async def hello(self, request: web.Request) -> web.Response:
        now = time.time()
        if self.admission.overloaded(now):
            return self.beats.shed(request, now)
        server = await self.beats.agent(request, counted=True)
        return web.json_response(
            {
                "server": server.name,
                "site": self.site_name,
                "site_public_key": self.key.public.hex,
                "interval": self.cadence.interval,
            }
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        now = time.time()
        if self.admission.overloaded(now):
            return self.beats.shed(request, now)
        server = await self.beats.agent(request, counted=True)
        beat = Heartbeat.from_json(await json_body(request))
        woken = await self.beats.record(server.name, beat, now)
        if woken:
            log.info("%s is back: %d instruction(s) woken", server.name, woken)
            self.despooler.wake.set()
        return self.beats.answer(woken)

    async def manifest(self, request: web.Request) -> web.Response:
        await self._agent(request)
        pid = request.match_info["package_id"]
        data, sig = await self.db(lambda s: s.package_manifest(pid))
        return web.Response(
            body=data,
            content_type="application/json",
            headers={"X-Packdist-Signature": base64.b64encode(sig).decode()},
        )

    async def chunk(self, request: web.Request) -> web.Response:
        await self._agent(request)
        digest = Digest.parse(request.match_info["digest"])
        if not await self.db(lambda s: s.known_chunks([digest])):
            raise NotFound(f"no chunk {digest.short}… on this site")
        data = await asyncio.to_thread(self.library.read, digest)
        return web.Response(body=data, content_type="application/octet-stream")

    async def chunks(self, request: web.Request) -> web.StreamResponse:
        await self._agent(request)
        digests, accept, bases = _chunks_body(await json_body(request))
        known = await self.db(lambda s: s.known_chunks(digests))
        unknown = [d for d in digests if d not in known]
        if unknown:
            raise NotFound(f"{len(unknown)} chunk(s) not on this site, e.g. {unknown[0].short}…")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-packdist-chunks"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        groups = [digests[i : i + GROUP_CHUNKS] for i in range(0, len(digests), GROUP_CHUNKS)]
        reads: deque[asyncio.Future[tuple[bytes, str | None]]] = deque()
        queue = iter(groups)

        async def send(data: bytes) -> None:
            # In slices: the upload limit (shared by every stream) takes turns at a fine grain,
            # and the write timeout bounds one slice, however slow the limit makes the whole.
            view = memoryview(data)
            for i in range(0, len(view), SEND_SLICE):
                piece = view[i : i + SEND_SLICE]
                await self.upload.take(len(piece))
                # Bounded: an agent that stops reading must not hold this handler forever.
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await resp.write(piece)

        # Plain zstd pays only on a link slower than the compressor. Measured on this very
        # stream: the bytes written over the time spent waiting for the agent to take them
        # (deltas always pay; until enough is measured, assume a slow link).
        encodings = accept
        written, waited = 0, 0.0
        base_cache = _Bases()  # verified base chunks of this request, read once each
        try:
            while True:  # keep READ_AHEAD groups of file reads under way while we write
                while len(reads) < READ_AHEAD and (g := next(queue, None)) is not None:
                    reads.append(
                        loop.run_in_executor(
                            None, self._read_frames, g, encodings, bases, base_cache
                        )
                    )
                if not reads:
                    break
                frames, error = await reads.popleft()
                started = time.monotonic()
                await send(frames)
                written += len(frames)
                waited += time.monotonic() - started
                if written >= RATE_SAMPLE:
                    rate = written / max(waited, 1e-6)
                    if rate > FAST_LINK:
                        encodings = accept - {Encoding.ZSTD}
                    elif rate < FAST_LINK / 2:
                        encodings = accept
                if error is not None:
                    await send(error_frame(error))
                    break
        except (ConnectionError, TimeoutError) as exc:  # the agent will ask again
            stalled = isinstance(exc, TimeoutError)
            log.info(
                "chunk stream to %s %s",
                request.remote,
                f"dropped: the agent read nothing for {WRITE_TIMEOUT:g}s"
                if stalled
                else "cut by the agent",
            )
            for rest in reads:
                rest.cancel()
            if stalled and request.transport is not None:
                request.transport.abort()  # or write_eof would wait on the agent again
            return resp
        await resp.write_eof()
        return resp

    def _read_frames(
        self,
        group: list[Digest],
        accept: frozenset[Encoding],
        bases: dict[Digest, list[Digest]],
        base_cache: _Bases,
    ) -> tuple[bytes, str | None]:
        """A group of chunks read from the library, each encoded as it pays (see
        :mod:`packdist.core.codec`) and framed, as one buffer (one write per group, not two
        per chunk); the error that stopped it, if any."""
        parts: list[bytes] = []
        for d in group:
            try:
                data = self.library.read(d)
            except PackdistError as exc:
                return b"".join(parts), exc.message
            base = self._base(bases.get(d, ()), base_cache)
            encoding, payload = codec.encode(data, accept, base)
            parts.append(frame_header(d, encoding, len(data), len(payload)))
            parts.append(payload)
        return b"".join(parts), None

    def _base(self, digests: Sequence[Digest], cache: _Bases) -> bytes | None:
        """The bytes of an agent's base chunks, if the library holds every one intact (and
        the request's budget for reading bases is not spent)."""
        if not digests:
            return None
        parts = []
        for d in digests:
            data = cache.get(d, self._read_base)
            if data is None:
                return None
            parts.append(data)
        joined = b"".join(parts)
        return joined if len(joined) <= codec.MAX_BASE_BYTES else None

    def _read_base(self, digest: Digest) -> bytes | None:
        try:
            if self.library.path(digest).stat().st_size > codec.MAX_BASE_BYTES:
                return None  # no use reading it: the bases of one chunk may not be bigger
            data = self.library.read(digest)
            digest.verify(data)  # a damaged base would only make a chunk that fails to verify
        except (PackdistError, OSError):
            return None
        return data

    # --- life cycle -----------------------------------------------------------------------

    async def run(self, listen: str) -> None:
        self.site_name = await self.db(lambda s: s.site_name())
        site_tls = None
        if self.settings.plain_http:
            log.warning("serving plain HTTP (--plain-http): traffic can be read on the path")
            session = new_session(tls=dialing_context(self.home.root))  # https:// agents still
        else:
            site_tls = await asyncio.to_thread(
                SiteTLS,
                self.home.root,
                self.certificates.authority,
                self.site_name,
                _listen_host(listen),
                self.settings.tls_hosts,
            )
            session = new_session(tls=site_tls.client)
        await self.beats.start()
        self._despooler = Despooler(
            self.db,
            self.key,
            session,
            policy=self.settings.retry_policy(),
            max_in_flight=self.max_in_flight,
            peers=PeerSettings(self.settings.peers_enabled, self.settings.peers_location_label),
            library=self.library,
            on_installed=self.liveness.installed,
            silent_after=self.beats.silent_after,
            on_retry=self.liveness.unreached,
            heard=self.liveness.last_heard,
        )
        despooler = asyncio.create_task(self.despooler.run(), name="despooler")
        flusher = asyncio.create_task(self.beats.flush_loop(), name="liveness")
        lag = asyncio.create_task(self.admission.watch_lag(), name="loop lag")
        background = [despooler, flusher, lag]
        if site_tls is not None:
            background.append(asyncio.create_task(renewal_loop(site_tls), name="certificate"))
        interval = self.settings.validation_interval
        if interval > 0:  # scheduled validation, in the background: never blocks other work
            background.append(
                asyncio.create_task(
                    validation_loop(self.db, self.key, session, interval, self.despooler.wake.set),
                    name="validation",
                )
            )
        try:
            await serve_until_stopped(
                self.app(), listen, site_tls.server if site_tls is not None else None
            )
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.beats.flush()
            await self.despooler.shutdown()
            await session.close()
            self.db.close()


def _listen_host(listen: str) -> str:
    try:
        return split_listen(listen)[0]
    except ValueError as exc:
        raise UserError(f"--listen {listen!r}: {exc}") from exc


class _Bases:
    """The base chunks one chunk request has read: each read and verified once, and at most
    ``BASE_BUDGET`` bytes of them (beyond that, chunks go without bases). Shared by the
    worker threads that encode the request's groups."""

    def __init__(self) -> None:
        self._data: dict[Digest, bytes | None] = {}
        self._lock = threading.Lock()
        self._left = BASE_BUDGET

    def get(self, digest: Digest, read: Callable[[Digest], bytes | None]) -> bytes | None:
        with self._lock:
            if digest in self._data:
                return self._data[digest]
            if self._left <= 0:
                return None
        data = read(digest)
        with self._lock:
            self._data[digest] = data
            self._left -= len(data) if data else 0
        return data


def _chunks_body(
    body: Any,
) -> tuple[list[Digest], frozenset[Encoding], dict[Digest, list[Digest]]]:
    """``(digests, accepted encodings, bases)`` of a chunk request (see
    :mod:`packdist.http`), or UserError (a 400) saying what is wrong with it."""
    if not isinstance(body, dict) or not isinstance(body.get("digests"), list):
        raise UserError('body must be {"digests": [hex, ...], "accept": [...], "bases": {...}}')
    digests = [Digest.parse(str(x)) for x in body["digests"]]  # UserError if not a digest
    if len(digests) > MAX_BATCH:
        raise UserError(f"at most {MAX_BATCH} chunks per request")
    accept = body.get("accept", [])
    if not isinstance(accept, list):
        raise UserError("chunk request accept must be a list of encodings")
    raw_bases = body.get("bases", {})
    if not isinstance(raw_bases, dict) or len(raw_bases) > len(digests):
        raise UserError("chunk request bases must map a requested chunk to its base chunks")
    wanted = set(digests)
    bases: dict[Digest, list[Digest]] = {}
    for key, value in raw_bases.items():
        if not isinstance(value, list) or len(value) > codec.MAX_BASES:
            raise UserError(f"at most {codec.MAX_BASES} base chunks per chunk")
        d = Digest.parse(str(key))
        if d in wanted:
            bases[d] = [Digest.parse(str(b)) for b in value]
    return digests, codec.parse_accept(accept), bases


def run_site(
    home: SiteHome, listen: str, max_in_flight: int, settings: Settings | None = None
) -> None:
    logging.getLogger("packdist").setLevel(logging.INFO)
    if max_in_flight < 1:
        raise UserError("--workers must be at least 1")
    server = SiteServer(home, max_in_flight, settings)

    async def main() -> None:
        # the process's own set-up for thousands of agents (see process.py): here, not in
        # SiteServer.run, which tests run inside their own process
        settle_collector()
        quiet_accept_errors(asyncio.get_running_loop())
        server.beats.files_limit = raise_open_files_limit()
        log.info("open files limit: %d", server.beats.files_limit)
        await server.run(listen)

    # uvloop: at 10,000 agents, 0.26 ms of CPU per heartbeat instead of 0.32 and 464
    # instructions/s instead of 392 (docs/benchmarks.md); PACKDIST_EVENT_LOOP=asyncio
    # runs on asyncio's own loop, to compare
    if os.environ.get("PACKDIST_EVENT_LOOP", "uvloop") == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
        return
    asyncio.run(main())


__all__: list[Any] = ["SiteServer", "run_site"]
