"""The content routes of the site: what agents fetch a package with (its signed manifest,
its chunks one at a time or as a framed stream, each encoded as it pays).

* ``GET /v1/packages/{id}/manifest`` — canonical manifest, signature in the
  ``X-Packdist-Signature`` header.
* ``GET /v1/chunks/{digest}`` — one chunk, raw.
* ``POST /v1/chunks`` — a framed stream of the requested chunks, each raw, zstd or zstd
  against a base the agent holds (see :mod:`packdist.http`); the upload limit shared by
  every stream, a stalled agent dropped.

Each needs an agent's enrollment token (:meth:`packdist.site.beats.Beats.agent`) or a child
site's token (a child fetches the packages it is sent as an agent would).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from packdist.core import codec
from packdist.core.bases import joined_bases
from packdist.core.codec import Encoding
from packdist.core.cpu import CpuTimes
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest
from packdist.errors import Busy, Forbidden, NotFound, PackdistError, UserError
from packdist.http import HEADER_SIZE, error_frame, frame_header
from packdist.ratelimit import Bucket
from packdist.site.beats import Beats, json_body
from packdist.site.delta_cache import OneAtATime
from packdist.site.library import ContentLibrary
from packdist.site.store_runner import StoreRunner
from packdist.site.stream_writes import BodyWrites, slices

log = logging.getLogger("packdist.site")

MAX_BATCH = 4096
READ_AHEAD = 3  # groups of chunks read ahead of the network
GROUP_CHUNKS = 32  # chunks framed into one write
WRITE_TIMEOUT = 15.0  # an agent that takes no bytes of a chunk stream this long is dropped
#: above this rate (bytes/s at which an agent takes a stream) plain zstd costs more time than
#: it saves, and chunks go raw (deltas against bases still go encoded); below half of it,
#: compression comes back. zstd level 1 runs at ~200-300 MB/s per core on text.
FAST_LINK = 250e6
#: chunk bytes (decoded: a stream compressed 4x still ends its windows) sent before the rate
#: is trusted (socket buffers take the first few MiB at once, whatever the link), then
#: measured again every as many
RATE_SAMPLE = 8 * 1024 * 1024
RAW_MEMORY = 100_000  # servers whose last stream's choice is remembered
#: the share of a window's time a stream waits for the agent to take its bytes: below
#: SITE_BOUND the site is what holds it back (reading, encoding: on loopback, or a fast LAN
#: with a busy site), and compressing would only slow it further; above LINK_BOUND the
#: link is, and compressing pays
SITE_BOUND = 0.2
LINK_BOUND = 0.5
#: below this share of idle processor time on the machine, compressing takes its time from
#: the transfer itself: chunks go raw (on loopback the agent shares the cores; see
#: packdist/core/cpu.py)
BUSY_IDLE = 0.15
#: base chunk bytes one chunk request may make the site read (distinct bases; about 4x the
#: largest batch an agent asks for in one request)
BASE_BUDGET = 128 * 1024 * 1024
SEND_SLICE = 256 * 1024  # bytes written (and taken from the upload limit) at a time


@dataclass(frozen=True)
class Reader:
    """Who a content request comes from, and what bounds what it is sent."""

    name: str  # an agent's server name, or "child site NAME"
    limit: Bucket | None = None  # a child site's bandwidth, shared by all its streams
    #: a child site's schedule: the words saying why its link is closed now, or None
    closed: Callable[[float], str | None] | None = None
    #: a child site reads only packages sent to it: whether this one is (None: an agent,
    #: whose peers' and site's rules are its own)
    may_read: Callable[[str], Awaitable[bool]] | None = None

    def closed_now(self) -> str | None:
        return None if self.closed is None else self.closed(time.time())


class ContentRoutes:
    def __init__(
        self,
        beats: Beats,
        db: StoreRunner,
        library: ContentLibrary,
        upload: Bucket,
        reader: Callable[[web.Request], Awaitable[Reader]] | None = None,
    ) -> None:
        self.beats = beats
        #: who a request comes from (an agent's server name, or a child site), or AuthError
        self.reader = reader or self._agent
        self.db = db
        self.library = library
        self.deltas = library.deltas
        self._encodings = OneAtATime()
        self.upload = upload
        #: whether a server's last stream ended sending plain chunks raw (see ``chunks``)
        self._raw: dict[str, bool] = {}
        self._chunks_of: dict[str, frozenset[Digest]] = {}  # packages sent to children

    async def _agent(self, request: web.Request) -> Reader:
        return Reader((await self.beats.agent(request)).name)

    async def _only_agents(self, request: web.Request) -> None:
        """Single chunks and manifests are for agents: a child site is handed the manifest
        it is sent, and streams the chunks of that one package."""
        if (await self.reader(request)).may_read is not None:
            raise Forbidden("a child site fetches only the chunk streams of packages sent to it")

    async def _check_package(self, reader: Reader, body: Any, digests: list[Digest]) -> None:
        """A child site's request: for a package sent to it, and only that package's chunks."""
        assert reader.may_read is not None
        pid = body.get("package") if isinstance(body, dict) else None
        if not isinstance(pid, str) or not await reader.may_read(pid):
            raise Forbidden(f"{reader.name}: no package of that id was sent to it")
        chunks = self._chunks_of.get(pid)
        if chunks is None:
            data, _ = await self.db(lambda s: s.package_manifest(pid))
            parsed = await asyncio.to_thread(Manifest.parse, data)  # large: off the loop
            chunks = frozenset(parsed.chunk_sizes())
            if len(self._chunks_of) >= 16:  # a few packages on their way to children
                self._chunks_of.clear()
            self._chunks_of[pid] = chunks
        if not chunks.issuperset(digests):
            raise Forbidden(f"{reader.name}: those chunks are not all of package {pid[:12]}…")

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chunks", self.chunks)
        app.router.add_get("/v1/chunks/{digest}", self.chunk)
        app.router.add_get("/v1/packages/{package_id}/manifest", self.manifest)

    async def manifest(self, request: web.Request) -> web.Response:
        await self._only_agents(request)
        pid = request.match_info["package_id"]
        data, sig = await self.db(lambda s: s.package_manifest(pid))
        return web.Response(
            body=data,
            content_type="application/json",
            headers={"X-Packdist-Signature": base64.b64encode(sig).decode()},
        )

    async def chunk(self, request: web.Request) -> web.Response:
        await self._only_agents(request)
        digest = Digest.parse(request.match_info["digest"])
        if not await self.db(lambda s: s.known_chunks([digest])):
            raise NotFound(f"no chunk {digest.short}… on this site")
        data = await asyncio.to_thread(self.library.read, digest)
        return web.Response(body=data, content_type="application/octet-stream")

    async def chunks(self, request: web.Request) -> web.StreamResponse:
        reader = await self.reader(request)
        server = reader.name
        if words := reader.closed_now():  # before anything is read or sent
            raise Busy(f"{server}: {words}")
        body = await json_body(request)
        digests, accept, bases = _chunks_body(body)
        if reader.may_read is not None:
            await self._check_package(reader, body, digests)
        known = await self.db(lambda s: s.known_chunks(digests))
        unknown = [d for d in digests if d not in known]
        if unknown:
            raise NotFound(f"{len(unknown)} chunk(s) not on this site, e.g. {unknown[0].short}…")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-packdist-chunks"})
        writer = await resp.prepare(request)  # a StreamResponse sends its headers here
        assert writer is not None and request.transport is not None
        body = BodyWrites(
            request.transport,
            chunked=bool(getattr(writer, "chunked", False)),
        )
        loop = asyncio.get_running_loop()
        groups = [digests[i : i + GROUP_CHUNKS] for i in range(0, len(digests), GROUP_CHUNKS)]
        reads: deque[asyncio.Future[tuple[list[bytes], int, int, str | None]]] = deque()
        queue = iter(groups)

        async def send(parts: list[bytes]) -> None:
            # In slices: the upload limit (shared by every stream) takes turns at a fine grain,
            # and the write timeout bounds one slice, however slow the limit makes the whole.
            for piece, n in slices(parts, SEND_SLICE):
                await self.upload.take(n)
                if reader.limit is not None:
                    await reader.limit.take(n)
                body.write(piece, n)  # as read: not joined into one buffer first
                # Bounded: an agent that stops reading must not hold this handler forever.
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await writer.drain()

        # Plain zstd pays only where the link, not the site, is what the stream waits on.
        # Measured on this very stream, window by window: the share of the time spent
        # waiting for the agent (or the upload limit) to take the bytes; and the bytes
        # written over that time, against the compressor's speed (deltas always pay; until
        # a window is measured, assume a slow link).
        # An agent asks for a package in many requests: each starts as the last one left off.
        encodings = accept - {Encoding.ZSTD} if self._raw.get(server) else accept
        written, decoded, waited, window_start = 0, 0, 0.0, time.monotonic()
        cpu = CpuTimes.now()
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
                if words := reader.closed_now():  # a window closed: what was sent is kept
                    await send([error_frame(f"{server}: {words}")])
                    for rest in reads:
                        rest.cancel()
                    break
                frames, wire, sizes, error = await reads.popleft()
                started = time.monotonic()
                await send(frames)
                written += wire
                decoded += sizes
                waited += time.monotonic() - started
                if decoded >= RATE_SAMPLE:
                    now, cpu_now = time.monotonic(), CpuTimes.now()
                    held = waited / max(now - window_start, 1e-6)
                    rate = written / max(waited, 1e-6)
                    idle = cpu_now.idle_share_since(cpu) if cpu_now is not None else 1.0
                    zstd = compress_next(Encoding.ZSTD in encodings, rate, held, idle)
                    encodings = accept if zstd else accept - {Encoding.ZSTD}
                    written, decoded, waited, window_start, cpu = 0, 0, 0.0, now, cpu_now
                    if len(self._raw) >= RAW_MEMORY:  # bounded: forgetting costs one window
                        self._raw.clear()
                    self._raw[server] = Encoding.ZSTD not in encodings
                if error is not None:
                    await send([error_frame(error)])
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
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):  # its drain waits on the agent too
                await resp.write_eof()
        except (ConnectionError, TimeoutError):
            if request.transport is not None:
                request.transport.abort()
        return resp

    def _read_frames(
        self,
        group: list[Digest],
        accept: frozenset[Encoding],
        bases: dict[Digest, list[Digest]],
        base_cache: _Bases,
    ) -> tuple[list[bytes], int, int, str | None]:
        """A group of chunks read from the library, each encoded as it pays (see
        :mod:`packdist.core.codec`) and framed: the frames' parts (headers and payloads, in
        order), their bytes, the chunks' bytes, and the error that stopped it, if any."""
        parts: list[bytes] = []
        sizes = wire = 0
        for d in group:
            try:
                data = self.library.read(d)
            except PackdistError as exc:
                return parts, wire, sizes, exc.message
            encoding, payload = self._encode(d, data, accept, bases.get(d, ()), base_cache)
            parts.append(frame_header(d, encoding, len(data), len(payload)))
            parts.append(payload)
            sizes += len(data)
            wire += HEADER_SIZE + len(payload)
        return parts, wire, sizes, None

    def _encode(
        self,
        digest: Digest,
        data: bytes,
        accept: frozenset[Encoding],
        named: Sequence[Digest],
        base_cache: _Bases,
    ) -> tuple[Encoding, bytes]:
        """``data`` encoded as it pays; against the bases ``named``, the delta kept from an
        earlier request or the import, else computed now and kept."""
        if not named or Encoding.ZSTD_BASE not in accept:
            return codec.encode(data, accept)
        with self._encodings.one(digest, named):  # many agents asking at once: one encodes
            kept = self.deltas.get(digest, named)
            if kept is not None:
                return kept if kept[0] == Encoding.ZSTD_BASE else (Encoding.RAW, data)
            base = self._base(named, base_cache)
            encoding, payload = codec.encode(data, accept, base)
            if base is not None and digest.holds(data):  # never keep a damaged chunk's delta
                self.deltas.put(digest, named, encoding, payload)
            return encoding, payload

    def _base(self, digests: Sequence[Digest], cache: _Bases) -> bytes | None:
        """The bytes of an agent's base chunks, if the library holds every one intact (and
        the request's budget for reading bases is not spent)."""
        if not digests:
            return None
        return joined_bases(digests, lambda d: cache.get(d, self._read_base))

    def _read_base(self, digest: Digest) -> bytes | None:
        try:
            if self.library.path(digest).stat().st_size > codec.MAX_BASE_BYTES:
                return None  # no use reading it: the bases of one chunk may not be bigger
        except OSError:
            return None
        return self.library.intact(digest)


def compress_next(now: bool, rate: float, held: float, idle: float) -> bool:
    """Whether a stream's next window gets plain zstd (``now``: this one did), from what
    this one measured: ``rate``, the bytes/s at which the agent took them; ``held``, the
    share of the window spent waiting for it to; ``idle``, the machine's idle share. Raw
    where the link is fast, where the site holds the stream back, or where no processor
    has time to spare; zstd again only where all three say the link is the bound (apart,
    so that a stream near one bound does not flip every window)."""
    busy = rate > FAST_LINK / 4 and idle < BUSY_IDLE  # a WAN stays compressed on a busy host
    if rate > FAST_LINK or held < SITE_BOUND or busy:
        return False
    if (
        rate < FAST_LINK / 2
        and held > LINK_BOUND
        and (idle > 2 * BUSY_IDLE or rate < FAST_LINK / 4)
    ):
        return True
    return now


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
