"""The chunks a fetch still lacks, from each source in turn, nearest first.

A source gives what it can in batches; a chunk it answers ``MISSING`` for stays for the
next source. A source that fails (cannot be reached within ``CONNECT`` seconds, stays
silent ``READ`` seconds, answers an error, sends a chunk that does not verify) or is slow
(a batch not done within ``SLOW_AFTER`` seconds plus its bytes at ``MIN_RATE``) is
dropped at once and the chunks still missing go to the next: no waiting for it to come
back, no retry of it within this fetch. Whatever a source gave before it failed is kept
(written, verified). Every chunk is decoded and verified against its digest -- which the
signed manifest names -- in :func:`take`, the one place, before it is written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from packdist.auth import CLIENT_TTL, PEER_CHUNKS_PATH
from packdist.client.staging import WritePlan
from packdist.core.codec import Encoding, decode
from packdist.core.digest import Digest
from packdist.errors import AuthError, IntegrityError, PackdistError, TransferError
from packdist.http import HOLDER_HEADER, MISSING, Frame, Timeouts
from packdist.protocol.chunk_stream import ChunkStreams, StreamStop
from packdist.protocol.client_api import Source

log = logging.getLogger("packdist.client")

CONNECT = 2.0  # seconds to reach a source
READ = 5.0  # seconds a source may stay silent mid-stream
TIMEOUTS = Timeouts(connect=CONNECT, read=READ, total=None)
SLOW_AFTER = 10.0  # seconds a batch may take, plus its bytes at MIN_RATE
MIN_RATE = 1_000_000.0  # bytes/s
AGENT_BATCH = 64  # chunks per request to an agent (it takes 256 at most)
SITE_BATCH = 512  # chunks per request to the site (it takes 4,096)
PEER_MAX_PAYLOAD = 16 * 1024 * 1024  # an agent sends chunks raw: none is larger


@dataclass
class Progress:
    """What a transfer took from each source, and the sources it left and why."""

    by_source: dict[str, int] = field(default_factory=dict)  # name -> chunk bytes
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)


#: the frames a source sends for some chunks (a blocking iterator, read in this thread)
Ask = Callable[[Source, list[Digest], StreamStop], Iterator[Frame]]


class Requester:
    """How each kind of source is asked: an agent on the peers' route with the site's
    client credential, the site on its chunk route with the client's token."""

    def __init__(
        self,
        streams: ChunkStreams,
        package_id: str,
        credential: str,
        token: str,
        renew: Callable[[], str] | None = None,
    ) -> None:
        self.streams = streams
        self.package_id = package_id
        self.credential = credential
        self.token = token
        #: a new credential from the site (a new sources request), taken once this one is
        #: half its life old: a long fetch goes on, and a client removed meanwhile is
        #: refused (AuthError) from then on, by the site and so by the agents
        self.renew = renew
        self._issued = time.monotonic()

    def _credential(self) -> str:
        if self.renew is not None and time.monotonic() - self._issued > CLIENT_TTL / 2:
            try:
                self.credential = self.renew()
                self._issued = time.monotonic()
            except AuthError:
                raise
            except PackdistError as exc:  # the site unreachable: this one lives a while yet
                log.info("could not renew the client credential: %s", exc.message)
        return self.credential

    def __call__(self, source: Source, digests: list[Digest], stop: StreamStop) -> Iterator[Frame]:
        hexes = [d.hex for d in digests]
        body: dict[str, Any]
        try:
            if source.is_site:
                headers = {"Authorization": f"Bearer {self.token}", HOLDER_HEADER: "site"}
                body = {"package": self.package_id, "digests": hexes, "accept": ["zstd"]}
                yield from self.streams.post(f"{source.url}/v1/chunks", headers, body, stop)
            else:
                headers = {
                    "Authorization": f"Bearer {self._credential()}",
                    HOLDER_HEADER: f"server/{source.name}",
                }
                body = {"package": self.package_id, "digests": hexes, "wait": 0}
                url = f"{source.url}{PEER_CHUNKS_PATH}"
                yield from self.streams.post(url, headers, body, stop, PEER_MAX_PAYLOAD)
        except ValueError as exc:  # a URL or header the HTTP client refuses
            raise TransferError(f"cannot ask {source.name}: {exc}") from exc


def fetch_missing(
    plan: WritePlan,
    sources: list[Source],
    ask: Ask,
    progress: Progress,
    say: Callable[[str], None] = lambda words: None,
    slow_after: float = SLOW_AFTER,
) -> None:
    """Every chunk still missing in ``plan``, from ``sources`` in order; TransferError
    naming each source's failure when some are left after the last. A batch may take
    ``slow_after`` seconds plus its bytes at ``MIN_RATE``."""
    for n, source in enumerate(sources):
        if not plan.missing:
            return
        last = n == len(sources) - 1
        try:
            # the last source is never dropped for being slow: with none after it, slow is
            # better than failing (a stall still ends it: the stream's read timeout)
            _from_source(plan, source, ask, progress, float("inf") if last else slow_after)
        except AuthError:
            raise  # this client was removed, or its credential refused: no source will do
        except PackdistError as exc:
            progress.dropped.append((source.name, exc.message))
            left = len(plan.missing)
            say(f"{source.name}: {exc.message}; {left} chunk(s) left, asking the next source")
            log.info("source %s dropped: %s", source.name, exc.message)
    if plan.missing:
        why = "; ".join(f"{name}: {words}" for name, words in progress.dropped) or "none had them"
        raise TransferError(
            f"{len(plan.missing)} chunk(s) could not be fetched from any source ({why})"
        )


def _from_source(
    plan: WritePlan, source: Source, ask: Ask, progress: Progress, slow_after: float
) -> None:
    size = SITE_BATCH if source.is_site else AGENT_BATCH
    wanted = list(plan.missing)
    for i in range(0, len(wanted), size):
        batch = [d for d in wanted[i : i + size] if d in plan.missing]
        if batch:
            _batch(plan, source, ask, progress, batch, slow_after)


def _batch(
    plan: WritePlan,
    source: Source,
    ask: Ask,
    progress: Progress,
    batch: list[Digest],
    slow_after: float,
) -> None:
    """One request, bounded in time: a source too slow for it is stopped."""
    stop = StreamStop()
    budget = slow_after + sum(plan.sizes[d] for d in batch) / MIN_RATE
    timer = threading.Timer(budget, stop.stop) if budget != float("inf") else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    asked = set(batch)
    try:
        for frame in ask(source, batch, stop):
            if frame.digest not in asked:
                raise IntegrityError(
                    f"{source.name} sent chunk {frame.digest.short}…, not asked for"
                )
            if frame.encoding == MISSING:
                continue
            take(plan, frame, source.name)
            progress.by_source[source.name] = progress.by_source.get(source.name, 0) + frame.size
    except PackdistError as exc:
        if stop.stopped:
            raise TransferError(
                f"too slow: {len(batch)} chunk(s) not done within {budget:.0f}s"
            ) from exc
        raise
    finally:
        if timer is not None:
            timer.cancel()


def take(plan: WritePlan, frame: Frame, source: str) -> None:
    """Decode and verify one chunk against the digest the signed manifest names, then write
    it at its places (IntegrityError naming the source if it does not verify)."""
    digest = frame.digest
    size = plan.sizes.get(digest)
    if size is None or frame.size != size:
        raise IntegrityError(f"{source} sent chunk {digest.short}… of the wrong size")
    if frame.encoding not in (Encoding.RAW, Encoding.ZSTD):
        raise IntegrityError(f"{source} sent chunk {digest.short}… encoded as no one asked")
    data = decode(frame.encoding, frame.payload, size, digest, source=source)
    digest.verify(data, f"chunk from {source}")
    plan.put(digest, data)
