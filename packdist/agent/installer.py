"""Installs a signed manifest: fetch what is missing, verify, build, rename into place.

Steps, so that a server holds the whole version or none of it:

1. check the site's signature, then parse the manifest (which validates every path);
2. a version already installed with the same package id is done at once (unless it is a
   repair: then it is rebuilt, taking from the damaged tree every chunk that still verifies);
3. lay out ``staging/<package id>/`` (same file system as ``packages/``) with every file
   preallocated: a disk that cannot hold the version fails here, before any transfer,
   with "disk full: need N, have M", and nothing is left behind (``local_stage.py``);
4. find each chunk locally if possible: already in the staging tree from an interrupted
   attempt (re-verified), or in an installed version that shares it (verified on read;
   ``local_stage.py``);
5. fetch the rest in streamed batches, naming for each chunk the chunks of an installed
   version it probably resembles (:mod:`packdist.agent.bases`) so the site can send it
   compressed against them; every chunk is decoded (:mod:`packdist.core.codec`) and
   verified against its digest before it is written at its offsets (here);
6. set modes and times, create symlinks, ``syncfs``, then one ``rename`` into
   ``packages/NAME/VERSION`` -- or, if a tree is already there, one atomic exchange of the
   two names (``renameat2(RENAME_EXCHANGE)``), journalled so a crash at any point leaves a
   whole version in place and start-up recovery can tell which one (``commit_stage.py``).

The install's record is ``install_record.py``; where chunks go, ``write_plan.py``.

Bytes are written once, straight into the staging tree. The staging tree of an unfinished
install is kept across agent restarts, so chunks received before a crash are not fetched
again.

Every install reports ``phase`` (``layout``, ``local``, ``fetch``, ``finish``) and
``progress``, a counter that grows whenever the install does anything (a phase begins, an
entry is laid out or finished, a chunk is verified, received or written): the site watches
it to tell a slow install from a stalled one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from pathlib import Path

from packdist.agent.bases import choose_bases, read_base
from packdist.agent.commit_stage import journal_of, put_in_place, recover, settle
from packdist.agent.home import AgentHome
from packdist.agent.install_record import Install, InstallState, Phase
from packdist.agent.local_stage import RESERVE, fill_locally, lay_out
from packdist.agent.peering import ChunkView
from packdist.agent.sources import MISSING, PEER_BATCH, Peer, Pulse, split_work
from packdist.agent.write_plan import WritePlan, pwrite_fd
from packdist.core.codec import Encoding, decode
from packdist.core.digest import Digest
from packdist.core.fsutil import (
    human_bytes,
    start_writeback,
)
from packdist.core.manifest import Manifest, SignedManifest
from packdist.core.signing import VerifyKey
from packdist.errors import (
    Busy,
    DecodeError,
    DiskFull,
    ErrorKind,
    HashMismatch,
    PackdistError,
    RemoteError,
    TransferError,
)
from packdist.http import Frame
from packdist.ratelimit import Bucket

log = logging.getLogger("packdist.agent")

#: Install, InstallState and Phase live in agent/install_record.py now; re-exported here
__all__ = ["FETCH_ERROR_PREFIX", "RESERVE", "Install", "InstallState", "Installer", "Phase"]

BATCH_BYTES = 32 * 1024 * 1024
BATCH_CHUNKS = 1024
PARALLEL_BATCHES = 3
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


class Installer:
    def __init__(
        self,
        home: AgentHome,
        fetch: FetchChunks,
        source: str = "the site",
        peer_fetch: PeerFetch | None = None,
        download: Bucket | None = None,
    ) -> None:
        self.home = home
        self._fetch = fetch
        self._peer_fetch = peer_fetch
        self.source = source  # where fetched chunks come from, for messages
        self.installs: dict[str, Install] = {}
        self.pulse = Pulse()  # fires when an install starts or chunks land (peers wait on it)
        self.removing: set[str] = set()  # NAME@VERSION being removed now: no install starts
        self.download = download or Bucket()  # the agent's download limit, all sources
        self._loop: asyncio.AbstractEventLoop | None = None

    def chunk_view(self, package_id: str) -> ChunkView | None:
        """Where the chunks of a package being received here can be read, for peers."""
        inst = self.installs.get(package_id)
        if inst is None or inst.state is not InstallState.INSTALLING:
            return None
        return inst.view

    # --- entry points ---------------------------------------------------------------------

    async def start(
        self,
        data: bytes,
        signature: bytes,
        key: VerifyKey,
        repair: bool = False,
        peers: list[Peer] | None = None,
        me: str = "",
    ) -> Install:
        """Begin (or join) the install of a signed manifest; never blocks on the network.

        ``repair``: rebuild the version even if it is installed (validation found it damaged):
        a fresh staging tree takes every chunk that still verifies from the installed tree,
        only the damaged chunks are fetched, and the exchange replaces the damaged tree.

        The signature check, the parse and the look at ``installed.json`` run in a thread,
        off the event loop. Everything after the last ``await`` runs without yielding, so two
        concurrent requests for one package still make a single install: the second sees the
        first's entry in ``self.installs`` and joins it.
        """

        def check() -> tuple[Manifest, bool]:
            manifest = SignedManifest.verify(data, signature, key).manifest
            return manifest, self.home.installed().get(manifest.ref) == manifest.id.hex

        self._loop = asyncio.get_running_loop()
        checked_at = time.monotonic()
        manifest, installed = await asyncio.to_thread(check)
        pid = manifest.id.hex
        if manifest.ref in self.removing:  # looked at after the await, like the rest
            raise Busy(
                f"{manifest.ref} is being removed on this agent; install refused until it ends"
            )
        current = self.installs.get(pid)  # looked up again, after the await
        if current is not None and (
            current.state is InstallState.INSTALLING
            or (
                current.state is InstallState.INSTALLED
                # our look at installed.json may predate the end of that very install
                and ((installed and not repair) or (current.ended_at or 0.0) >= checked_at)
            )
        ):
            return current
        inst = Install(pid, manifest.ref, manifest.total_size, peers=peers or [], me=me)
        self.installs[pid] = inst
        if installed and not repair:
            inst.bytes_present = manifest.total_size
            inst.phase = Phase.FINISH
            inst.end(InstallState.INSTALLED)
            return inst
        inst.task = asyncio.create_task(self._run(inst, manifest), name=f"install {pid[:12]}")
        return inst

    def status(self, package_id: str) -> Install | None:
        return self.installs.get(package_id)

    def cancel(self, package_id: str) -> Install | None:
        """Stop an install under way (the site cancelled its instruction). One already
        putting its tree in place (``finish``) runs to its end: that step is never cut in
        half. What was fetched stays in staging, so a later install resumes from it."""
        inst = self.installs.get(package_id)
        if (
            inst is not None
            and inst.state is InstallState.INSTALLING
            and inst.phase is not Phase.FINISH
            and inst.task is not None
        ):
            inst.cancel_requested = True
            inst.task.cancel()
        return inst

    def recover(self) -> None:
        """Start-up recovery (see :func:`packdist.agent.commit_stage.recover`)."""
        recover(self.home)

    # --- the install ----------------------------------------------------------------------

    async def _run(self, inst: Install, manifest: Manifest) -> None:
        try:
            await self._install(inst, manifest)
            inst.end(InstallState.INSTALLED)
            log.info("installed %s (%s)", inst.ref, inst.package_id[:12])
        except asyncio.CancelledError:
            if not inst.cancel_requested:
                raise  # the agent is stopping
            inst.end(InstallState.CANCELLED, "cancelled by the site", ErrorKind.REFUSED)
            log.info("install of %s cancelled by the site", inst.ref)
        except PackdistError as exc:
            chunk = exc.digest if isinstance(exc, HashMismatch | DecodeError) else None
            inst.end(InstallState.FAILED, exc.message, exc.kind, chunk)
            log.warning("install of %s failed: %s", inst.ref, exc.message)
        except OSError as exc:
            kind = ErrorKind.DISK if exc.errno == errno.ENOSPC else ErrorKind.TRANSIENT
            inst.end(InstallState.FAILED, _os_error_words(exc), kind)
            log.warning("install of %s failed: %s", inst.ref, inst.error)
        except Exception as exc:  # a bug: say so, never hang
            inst.end(InstallState.FAILED, f"internal error in agent: {exc!r}", ErrorKind.INTERNAL)
            log.exception("install of %s failed", inst.ref)
        await asyncio.to_thread(self.trim_cache)  # a staging tree left behind counts

    def _running(self) -> frozenset[str]:
        """Ids of the installs under way (their staging trees are never evicted)."""
        installs = list(self.installs.items())  # a copy: also read from worker threads
        return frozenset(pid for pid, i in installs if i.state is InstallState.INSTALLING)

    def trim_cache(self, need: int = 0) -> None:
        """Bring the chunk cache within its limit (see :class:`AgentHome`), sparing the
        staging trees of installs under way; ``need``: also make that much room if it can."""
        try:
            self.home.trim_cache(self._running(), need)
        except OSError as exc:
            log.warning("trimming the chunk cache failed: %s", _os_error_words(exc))

    async def _install(self, inst: Install, manifest: Manifest) -> None:
        t0 = time.monotonic()
        plan = WritePlan(manifest)
        staging = self.home.staging / manifest.id.hex
        inst.enter(Phase.LAYOUT)
        if await asyncio.to_thread(settle, self.home, journal_of(self.home, manifest.id.hex)):
            inst.bytes_present = manifest.total_size  # an earlier attempt got it in place
            return
        resumed = await asyncio.to_thread(
            lay_out, self.home, self.trim_cache, inst, manifest, staging
        )
        inst.enter(Phase.LOCAL)
        try:
            missing = await asyncio.to_thread(fill_locally, self.home, inst, plan, staging, resumed)
            inst.bytes_present = manifest.total_size - sum(
                plan.sizes[d] * len(plan.locations[d]) for d in missing
            )
            inst.view = ChunkView.of(manifest, staging, set(plan.locations) - set(missing))
            self.pulse.fire()
            t1 = time.monotonic()
            if missing:
                inst.enter(Phase.FETCH)
                wanted = {d: inst.view.places[d] for d in missing}
                plan.bases = await asyncio.to_thread(
                    choose_bases, self.home, manifest, wanted, inst.tick
                )
                await self._fetch_all(inst, plan, staging, missing)
        finally:
            # in a thread: closing waits for chunk writers, which must not stall the loop
            # (heartbeats, status polls, peers) when an install is cancelled mid-write
            await asyncio.to_thread(plan.close)
        t2 = time.monotonic()
        inst.enter(Phase.FINISH)
        await asyncio.to_thread(put_in_place, self.home, inst, manifest, staging)
        log.info(
            "%s: prepared in %.2fs (%s local), fetched %s (%s on the wire) in %.2fs,"
            " finished in %.2fs",
            inst.ref,
            t1 - t0,
            human_bytes(inst.bytes_present),
            human_bytes(inst.bytes_received),
            human_bytes(inst.bytes_wire),
            t2 - t1,
            time.monotonic() - t2,
        )

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

    async def _fetch_all(
        self, inst: Install, plan: WritePlan, staging: Path, missing: list[Digest]
    ) -> None:
        """Fetch from the site and from peers at once (see :mod:`packdist.agent.sources`).

        One task per peer asks it for the chunks it owns, in order. What a peer lacks in
        time, or everything it still owed when it fails, moves to the site's queue, which
        ``PARALLEL_BATCHES`` tasks drain in batches until no peer task is left (without
        peers: the site's queue holds everything from the start).
        """
        assert inst.view is not None and inst.view.have is not None
        have = inst.view.have
        peers = inst.peers if self._peer_fetch is not None else []
        site_first, by_peer = split_work(missing, inst.me, peers)
        site_queue: deque[Digest] = deque(site_first)
        more = asyncio.Event()  # work for the site, or a peer task ended
        peers_left = 0
        # a peer is too slow below PEER_MIN_RATE, or below its fair part of our own limit
        streams = len(peers) + PARALLEL_BATCHES
        min_rate = min(PEER_MIN_RATE, self.download.rate / streams or PEER_MIN_RATE) / 2

        def to_site(digests: Iterable[Digest]) -> None:
            site_queue.extend(d for d in digests if d not in have)
            more.set()

        async def peer_worker(peer: Peer, work: deque[Digest]) -> None:
            nonlocal peers_left
            try:
                while work:
                    batch = [work.popleft() for _ in range(min(PEER_BATCH, len(work)))]
                    budget = PEER_SLOW_AFTER + sum(plan.sizes[d] for d in batch) / min_rate
                    try:
                        async with asyncio.timeout(budget):
                            got, lacking = await self._fetch_from_peer(
                                inst, plan, staging, peer, batch
                            )
                    except TimeoutError:  # a slow source: the site (or another) does better
                        log.info("%s: peer %s dropped for this transfer: too slow (%d chunks"
                                 " not in %.0fs)", inst.ref, peer.name, len(batch), budget)  # fmt: skip
                        to_site([*batch, *work])
                        return
                    except DiskFull:
                        raise
                    except PackdistError as exc:
                        log.info("%s: peer %s dropped for this transfer: %s", inst.ref, peer.name,
                                 exc.message)  # fmt: skip
                        to_site([*batch, *work])
                        return
                    if lacking:
                        to_site(lacking)
                        if not got:  # it has none of them: stop asking it
                            to_site(work)
                            return
            finally:
                peers_left -= 1
                more.set()

        async def site_worker() -> None:
            while True:
                if site_queue:
                    batch: list[Digest] = []
                    taken: set[Digest] = set()
                    size = 0
                    while site_queue and len(batch) < BATCH_CHUNKS:
                        d = site_queue[0]
                        if batch and size + plan.sizes[d] > BATCH_BYTES:
                            break
                        site_queue.popleft()
                        if d not in have and d not in taken:
                            batch.append(d)
                            taken.add(d)
                            size += plan.sizes[d]
                    if batch:
                        await self._fetch_batch(inst, plan, staging, batch)
                    continue
                if peers_left == 0:
                    return
                more.clear()
                await more.wait()

        tasks = []
        for peer in peers:
            work = deque(by_peer.get(peer.name, ()))
            if work:
                peers_left += 1
                tasks.append(asyncio.create_task(peer_worker(peer, work)))
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


def _os_error_words(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {Path(exc.filename or '').name or 'a file'}"
    return f"{exc.strerror or exc}: {exc.filename or ''}".strip(": ")
