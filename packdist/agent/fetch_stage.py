"""The fetch stage of an install: the chunks not found here, from the site and from peers
at once (each peer its share, by rendezvous hashing; the site the rest and whatever a peer
could not give), each decoded and verified against its digest before it is written at its
offsets in the staging tree. :class:`packdist.agent.installer.Installer` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

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
from packdist.ratelimit import Bucket

log = logging.getLogger("packdist.agent")

PARALLEL_BATCHES = 3  # site requests at once (their size: agent/fetch_plan.py)
#: a peer is dropped as slow when one request takes longer than this many seconds plus its
#: bytes at PEER_MIN_RATE (waiting for chunks it is still receiving included)
PEER_SLOW_AFTER = 10.0
PEER_MIN_RATE = 1_000_000.0  # bytes/s
PEER_WRITE_FRAMES = 4  # chunks from a peer held in memory before they are written
WRITE_BATCH = 1024 * 1024  # received chunks held in memory before they are written: what a
# SIGKILL can lose (a cut stream loses nothing: what arrived whole is written first)

FETCH_ERROR_PREFIX = "agent could not fetch chunks from the site: "

#: streams the requested chunks as frames (not yet decoded nor verified), each encoded raw,
#: zstd, or against the base chunks named for it (digest -> base digests, in order)
FetchChunks = Callable[[list[Digest], dict[Digest, list[Digest]]], AsyncGenerator[Frame, None]]


#: streams a peer's frames for chunks of a package (raw, or MISSING), not yet verified
PeerFetch = Callable[[Peer, str, list[Digest]], AsyncGenerator[Frame, None]]


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

    async def _fetch_batch(
        self, inst: Install, plan: WritePlan, staging: Path, batch: list[Digest]
    ) -> None:
        wanted = set(batch)
        bases = {d: [b.digest for b in plan.bases[d]] for d in batch if d in plan.bases}
        pending: list[Frame] = []
        pending_bytes = 0
        try:
            async with contextlib.aclosing(self._fetch(batch, bases)) as frames:
                async for frame in frames:
                    digest = frame.digest
                    if digest not in wanted:
                        raise RemoteError(f"site sent chunk {digest.short}… that was not asked for")
                    wanted.discard(digest)
                    await self.download.take(frame.wire_bytes)
                    pending.append(frame)
                    pending_bytes += plan.sizes[digest]  # decoded, in memory when written
                    inst.bytes_received += plan.sizes[digest]
                    inst.bytes_wire += frame.wire_bytes
                    inst.tick()
                    if pending_bytes >= WRITE_BATCH:
                        await asyncio.to_thread(self._write_chunks, inst, plan, staging, pending)
                        pending, pending_bytes = [], 0
            if pending:
                await asyncio.to_thread(self._write_chunks, inst, plan, staging, pending)
            pending = []
            if wanted:
                raise TransferError(f"site stream ended with {len(wanted)} chunk(s) missing")
        except PackdistError as exc:
            if pending:  # the stream broke: keep the chunks that arrived whole (resume)
                await self._salvage(inst, plan, staging, pending)
            if not isinstance(exc, TransferError) or exc.message.startswith(FETCH_ERROR_PREFIX):
                raise
            raise _fetch_error(exc) from exc

    async def _salvage(
        self, inst: Install, plan: WritePlan, staging: Path, frames: list[Frame], source: str = ""
    ) -> None:
        """Write what verifies of the frames a broken stream delivered; ignore the rest (the
        next attempt fetches it)."""
        try:
            await asyncio.to_thread(self._write_chunks, inst, plan, staging, frames, source)
        except PackdistError as exc:
            log.info("%s: kept part of a broken stream only: %s", inst.ref, exc.message)

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
        """Ask ``peer`` for ``batch``; returns (chunks received, chunks it lacked). A wrong
        or undecodable chunk raises: the caller drops that peer."""
        assert self._peer_fetch is not None
        source = f"peer {peer.name} ({peer.url})"
        wanted = set(batch)
        lacking: list[Digest] = []
        frames: list[Frame] = []
        got = 0
        try:
            async with contextlib.aclosing(
                self._peer_fetch(peer, inst.package_id, batch)
            ) as stream:
                async for frame in stream:
                    if frame.digest not in wanted:
                        raise RemoteError(
                            f"peer {peer.name} sent chunk {frame.digest.short}… unasked"
                        )
                    wanted.discard(frame.digest)
                    await self.download.take(frame.wire_bytes)
                    if frame.encoding == MISSING:
                        lacking.append(frame.digest)
                        continue
                    if frame.encoding != Encoding.RAW:
                        raise RemoteError(f"peer {peer.name} sent an encoding it may not use")
                    frames.append(frame)
                    got += 1
                    inst.tick()
                    if len(frames) >= PEER_WRITE_FRAMES:
                        await self._write_from_peer(inst, plan, staging, frames, source)
                        frames = []
        except BaseException:  # failed, too slow, cut: keep the chunks that arrived whole
            if frames:
                await self._salvage(inst, plan, staging, frames, source)
                self._count_from_peer(inst, plan, frames)
            raise
        if frames:
            await self._write_from_peer(inst, plan, staging, frames, source)
        return got, [*lacking, *wanted]

    async def _write_from_peer(
        self, inst: Install, plan: WritePlan, staging: Path, frames: list[Frame], source: str
    ) -> None:
        try:
            await asyncio.to_thread(self._write_chunks, inst, plan, staging, frames, source)
        finally:
            self._count_from_peer(inst, plan, frames)

    def _count_from_peer(self, inst: Install, plan: WritePlan, frames: list[Frame]) -> None:
        """Count what a peer sent once it verified: a liar's bytes are not "from peers" (the
        site sends those chunks again, and they count there)."""
        have = inst.view.have if inst.view is not None else None
        for f in frames:
            if have is None or f.digest in have:
                inst.bytes_received += plan.sizes[f.digest]
                inst.bytes_wire += f.wire_bytes
                inst.bytes_from_peers += f.wire_bytes

    def _write_chunks(
        self, inst: Install, plan: WritePlan, staging: Path, frames: list[Frame], source: str = ""
    ) -> None:
        """Decode each chunk (never beyond its size in the manifest), verify it against its
        digest, then write it wherever the tree needs it. ``source``: where the frames came
        from, for messages (default: the site)."""
        source = source or self.source
        touched: set[int] = set()
        written: list[Digest] = []
        try:
            with plan.writing():
                for frame in frames:
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
                        touched.add(fd)
                    written.append(digest)
                    inst.tick()
                for fd in touched:  # the final syncfs then finds little left to write
                    start_writeback(fd)
        finally:
            self._landed(inst, written)  # the ones before a bad frame count too

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
