"""The fetch stage of an install: the chunks not found here, from the site and from peers
at once (each peer its share, by rendezvous hashing; the site the rest and whatever a peer
could not give), each decoded and verified against its digest before it is written at its
offsets in the staging tree. :class:`packdist.agent.installer.Installer` runs it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from packdist.agent.bases import read_base
from packdist.agent.fetch_plan import FetchSchedule, PeerPace
from packdist.agent.install_record import Install
from packdist.agent.sources import MISSING, Peer, Pulse
from packdist.agent.write_plan import WritePlan, pwrite_fd
from packdist.core.codec import Encoding, decode
from packdist.core.digest import Digest
from packdist.core.fsutil import start_writeback
from packdist.errors import (
    DecodeError,
    DiskFull,
    PackdistError,
    RemoteError,
    TransferError,
)
from packdist.http import Frame
from packdist.protocol.chunk_stream import StreamStop
from packdist.ratelimit import Bucket

log = logging.getLogger("packdist.agent")
T = TypeVar("T")

PARALLEL_BATCHES = 3  # site requests at once (their size: agent/fetch_plan.py)
#: a peer is dropped as slow when one request takes longer than this many seconds plus its
#: bytes at PEER_MIN_RATE (waiting for chunks it is still receiving included)
PEER_SLOW_AFTER = 10.0
PEER_MIN_RATE = 1_000_000.0  # bytes/s
#: threads reading streams, every install together: more than the schedules ask at once
#: (three site streams and one per peer offered, at most 64, per install), since a stream
#: that waited for a thread would spend its peer's time budget in the queue; made as needed
STREAM_THREADS = 256
LIMIT_LOOK = 0.5  # seconds between two looks at a stop while waiting for the download limit
WRITEBACK_EVERY = 4 * 1024 * 1024  # bytes a stream writes between two writeback hints

FETCH_ERROR_PREFIX = "agent could not fetch chunks from the site: "

#: streams the requested chunks as frames (not yet decoded nor verified), each encoded raw,
#: zstd, or against the base chunks named for it (digest -> base digests, in order); a
#: blocking iterator, read in a worker thread (each frame's payload valid until the next),
#: which the StreamStop ends from the loop
FetchChunks = Callable[[list[Digest], dict[Digest, list[Digest]], StreamStop], Iterator[Frame]]


#: streams a peer's frames for chunks of a package (raw, or MISSING), not yet verified; read
#: in a worker thread as the site's are
PeerFetch = Callable[[Peer, str, list[Digest], StreamStop], Iterator[Frame]]


class FetchStage:
    """The fetch stage: :meth:`fetch_missing` (the installer is one; a test may run it alone).

    ``fetch`` streams chunks from the site (``source`` names it in messages), ``peer_fetch``
    from a peer (None: no peers); ``download`` is the agent's download limit, all sources.
    """

    def __init__(
        self,
        fetch: FetchChunks,
        source: str = "the site",
        peer_fetch: PeerFetch | None = None,
        download: Bucket | None = None,
    ) -> None:
        self._fetch = fetch
        self._peer_fetch = peer_fetch
        self.source = source  # where fetched chunks come from, for messages
        self.pulse = Pulse()  # fires when an install starts or chunks land (peers wait on it)
        self.download = download or Bucket()
        self._loop: asyncio.AbstractEventLoop | None = None  # set once running: see _landed
        self._stream_threads: ThreadPoolExecutor | None = None  # read the site's streams

    async def _fetch_batch(
        self, inst: Install, plan: WritePlan, staging: Path, batch: list[Digest]
    ) -> None:
        """One request to the site, read in a worker thread that writes each chunk as it
        arrives (what arrived whole before a cut is kept: the next attempt resumes)."""
        try:
            await self._in_stream_thread(self._stream_batch, inst, plan, staging, batch)
        except PackdistError as exc:
            if not isinstance(exc, TransferError) or exc.message.startswith(FETCH_ERROR_PREFIX):
                raise
            raise _fetch_error(exc) from exc

    async def _in_stream_thread(self, read: Callable[..., T], *args: Any) -> T:
        """``read(*args, stop)`` in a stream thread; cancelled (the install stops, a
        peer's time is up), the stream is stopped: the thread's blocked read returns."""
        stop = StreamStop()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._streams(), functools.partial(read, *args, stop))
        except BaseException:
            stop.stop()
            raise

    def stop_streams(self) -> None:
        """Let the stream threads go (an agent that stops: its installs were cancelled,
        which stopped their streams)."""
        if self._stream_threads is not None:
            self._stream_threads.shutdown(wait=False, cancel_futures=True)
            self._stream_threads = None

    def _streams(self) -> ThreadPoolExecutor:
        if self._stream_threads is None:
            self._stream_threads = ThreadPoolExecutor(STREAM_THREADS, "chunk-stream")
        return self._stream_threads

    def _stream_batch(
        self, inst: Install, plan: WritePlan, staging: Path, batch: list[Digest], stop: StreamStop
    ) -> None:
        """In a worker thread: each frame of the site's stream decoded, verified and written
        before the next is read (its payload is a view of the stream's buffer)."""
        wanted = set(batch)
        bases = {d: [b.digest for b in plan.bases[d]] for d in batch if d in plan.bases}
        written = _Written()
        frames = self._asked(self._fetch(batch, bases, stop), wanted, "site", stop)
        try:
            for frame in frames:
                with plan.writing():
                    self._write_chunk(plan, staging, frame, self.source, written)
                self._landed(inst, [frame.digest])
                inst.count(plan.sizes[frame.digest], frame.wire_bytes)
        finally:
            frames.close()
            written.start_writeback()
        if wanted:
            raise TransferError(f"site stream ended with {len(wanted)} chunk(s) missing")

    def _asked(
        self, frames: Iterator[Frame], wanted: set[Digest], sender: str, stop: StreamStop
    ) -> Generator[Frame, None, None]:
        """The frames of a stream, each one of ``wanted`` (taken out of it) and the download
        limit taken for it; the stream closed however this ends, so its connection is let go
        at once rather than when the generator is collected."""
        try:
            for frame in frames:
                if frame.digest not in wanted:
                    raise RemoteError(
                        f"{sender} sent chunk {frame.digest.short}… that was not asked for"
                    )
                wanted.discard(frame.digest)
                self._take_in_thread(frame.wire_bytes, stop)
                yield frame
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    def _take_in_thread(self, n: int, stop: StreamStop) -> None:
        """The download limit, from a worker thread (its bucket lives on the loop); given
        up when the stream is stopped or the loop has gone (no thread waits forever)."""
        loop = self._loop
        if not self.download.limited or loop is None:
            return
        taken = asyncio.run_coroutine_threadsafe(self.download.take(n), loop)
        while True:
            try:
                taken.result(timeout=LIMIT_LOOK)
                return
            except concurrent.futures.TimeoutError:
                if stop.stopped or loop.is_closed() or not loop.is_running():
                    taken.cancel()
                    stop.check()
                    raise TransferError("the agent is stopping") from None

    async def fetch_missing(
        self, inst: Install, plan: WritePlan, staging: Path, missing: list[Digest]
    ) -> None:
        """Fetch ``missing`` from the site and from peers at once, as a
        :class:`~packdist.agent.fetch_plan.FetchSchedule` says.

        One task per peer asks it for the chunks it owns, in order; ``PARALLEL_BATCHES``
        tasks drain the site's queue in batches until it is empty and no peer task is left
        that could hand work back. Raises unless every chunk landed.
        """
        assert inst.view is not None and inst.view.have is not None
        self._loop = asyncio.get_running_loop()  # writer threads wake waiting peers through it
        have = inst.view.have
        peers = inst.peers if self._peer_fetch is not None else []
        pace = PeerPace.under_limit(
            PEER_SLOW_AFTER, PEER_MIN_RATE, self.download.rate, len(peers) + PARALLEL_BATCHES
        )
        schedule = FetchSchedule(missing, inst.me, peers, plan.sizes, have, pace)
        more = asyncio.Event()  # work for the site, or a peer task ended

        async def peer_worker(peer: Peer) -> None:
            try:
                while batch := schedule.peer_batch(peer):
                    budget = schedule.peer_budget(batch)
                    try:
                        async with asyncio.timeout(budget):
                            got, lacking = await self._fetch_from_peer(
                                inst, plan, staging, peer, batch
                            )
                    except TimeoutError:  # a slow source: the site (or another) does better
                        log.info("%s: peer %s dropped for this transfer: too slow (%d chunks"
                                 " not in %.0fs)", inst.ref, peer.name, len(batch), budget)  # fmt: skip
                        schedule.peer_dropped(peer, batch)
                        return
                    except DiskFull:
                        raise
                    except PackdistError as exc:
                        log.info("%s: peer %s dropped for this transfer: %s", inst.ref, peer.name,
                                 exc.message)  # fmt: skip
                        schedule.peer_dropped(peer, batch)
                        return
                    schedule.peer_answered(peer, got, lacking)
                    if lacking:
                        more.set()
            finally:
                schedule.peer_ended(peer)
                more.set()

        async def site_worker() -> None:
            while True:
                batch = schedule.site_batch()
                if batch:
                    await self._fetch_batch(inst, plan, staging, batch)
                    continue
                if not schedule.peers_active:
                    return
                more.clear()
                await more.wait()

        tasks = [asyncio.create_task(peer_worker(peer)) for peer in schedule.peers]
        tasks += [asyncio.create_task(site_worker()) for _ in range(PARALLEL_BATCHES)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        left = [d for d in missing if d not in have]
        if left:
            raise TransferError(f"{len(left)} chunk(s) still missing after the transfer")

    async def _fetch_from_peer(
        self, inst: Install, plan: WritePlan, staging: Path, peer: Peer, batch: list[Digest]
    ) -> tuple[int, list[Digest]]:
        """Ask ``peer`` for ``batch``, read in a worker thread that writes each chunk as it
        arrives; returns (chunks received, chunks it lacked). A wrong or undecodable chunk
        raises: the caller drops that peer. Cancelled (the caller's time is up), the stream
        is stopped; what landed is kept and counted."""
        return await self._in_stream_thread(self._peer_stream, inst, plan, staging, peer, batch)

    def _peer_stream(
        self,
        inst: Install,
        plan: WritePlan,
        staging: Path,
        peer: Peer,
        batch: list[Digest],
        stop: StreamStop,
    ) -> tuple[int, list[Digest]]:
        assert self._peer_fetch is not None
        source = f"peer {peer.name} ({peer.url})"
        wanted = set(batch)
        lacking: list[Digest] = []
        got = 0
        written = _Written()
        stream = self._peer_fetch(peer, inst.package_id, batch, stop)
        frames = self._asked(stream, wanted, f"peer {peer.name}", stop)
        try:
            for frame in frames:
                digest = frame.digest
                if frame.encoding == MISSING:
                    lacking.append(digest)
                    continue
                if frame.encoding != Encoding.RAW:
                    raise RemoteError(f"peer {peer.name} sent an encoding it may not use")
                with plan.writing():
                    self._write_chunk(plan, staging, frame, source, written)
                self._landed(inst, [digest])
                # counted once it verified: a liar's bytes are not "from peers" (the site
                # sends those chunks again, and they count there)
                inst.count(plan.sizes[digest], frame.wire_bytes, from_peer=True)
                got += 1
        finally:
            frames.close()
            written.start_writeback()
        return got, [*lacking, *wanted]

    def _write_chunk(
        self, plan: WritePlan, staging: Path, frame: Frame, source: str, written: _Written
    ) -> None:
        """The one check of a fetched chunk, whatever its source: decoded (never beyond its
        size in the manifest) and verified against its digest, then written wherever the
        tree needs it. The caller holds ``plan.writing()``."""
        digest, size = frame.digest, plan.sizes[frame.digest]
        base = None
        if frame.encoding == Encoding.ZSTD_BASE:
            base = read_base(plan.bases.get(digest, ()))
            if base is None:
                raise DecodeError(
                    f"cannot decode chunk {digest.short}… from {source}: its"
                    " base chunks are no longer intact here",
                    digest=digest.hex,
                )
        data = decode(frame.encoding, frame.payload, size, digest, base, source)
        digest.verify(data, "chunk")
        for path, offset in plan.locations[digest]:
            fd = plan.fd(staging / path)
            pwrite_fd(fd, offset, data)
            written.add(fd, size)

    def _landed(self, inst: Install, digests: list[Digest]) -> None:
        """Chunks verified and written: peers may have them now (called from threads)."""
        view = inst.view
        if view is not None and view.have is not None:
            view.have.update(digests)
            # Waking the loop costs a write to its self-pipe: only when a peer waits. (A peer
            # that starts waiting just after this look waits for the next landing, or for
            # its own deadline at worst.)
            if self._loop is not None and self.pulse.waiting:
                self._loop.call_soon_threadsafe(self.pulse.fire)


def _fetch_error(exc: TransferError) -> TransferError:
    """The same kind of error, saying it was this agent fetching from the site: the words
    travel to the operator's ``last_error``, where "connection refused by http://SITE" alone
    reads as if the site could not reach the agent."""
    message = FETCH_ERROR_PREFIX + exc.message
    if isinstance(exc, RemoteError):
        return RemoteError(message, status=exc.status)
    try:
        return type(exc)(message)
    except TypeError:  # a subclass with another constructor: keep the words, lose the kind
        return TransferError(message)


class _Written:
    """The staging files a thread wrote to: their writeback started every
    ``WRITEBACK_EVERY`` bytes and at the end, so the final ``syncfs`` finds little left."""

    def __init__(self) -> None:
        self._fds: set[int] = set()
        self._bytes = 0

    def add(self, fd: int, n: int) -> None:
        self._fds.add(fd)
        self._bytes += n
        if self._bytes >= WRITEBACK_EVERY:
            self.start_writeback()

    def start_writeback(self) -> None:
        for fd in self._fds:
            start_writeback(fd)
        self._fds.clear()
        self._bytes = 0
