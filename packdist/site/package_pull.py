"""A child site takes the packages its parent sends it: once per package, whatever the
number of its servers it is for, and only the chunks its library lacks.

The parent's sender hands the child a signed manifest (:mod:`packdist.site.relay`); the
child verifies the signature against the keys it trusts (the parent's, and the sites'
above it), then fetches the missing chunks from the parent's chunk streams as an agent
would (encoded as the link pays: zstd, deltas), verifies each against its digest and
writes it to the library as it arrives, then records the package in its own catalogue.
A pull that fails keeps every chunk it wrote: the next one asks only for the rest (a chunk
on disk but not yet recorded is hashed again before it counts), so a transfer resumes at
chunk level after a cut link or a SIGKILL of either side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from packdist.core import codec
from packdist.core.bases import covering, files_of
from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest
from packdist.core.signing import VerifyKey
from packdist.errors import AlreadyExists, BadSignature, PackdistError, TransferError
from packdist.http import HOLDER_HEADER
from packdist.protocol.chunk_stream import ChunkStreams, StreamStop
from packdist.service import Service
from packdist.site.delta_prepare import earlier_versions, prepare_against
from packdist.site.library import ContentLibrary
from packdist.site.store_runner import StoreRunner

log = logging.getLogger("packdist.site")

BATCH = 128  # chunks asked for in one stream: a link's new limits apply from the next one


@dataclass
class Pull:
    """One package on its way from the parent; shared by every server that waits for it."""

    package_id: str
    ref: str
    first: str  # the server whose install started it: the link's bytes are counted there
    total: int = 0  # bytes of the chunks to fetch
    received: int = 0  # of those, fetched and written (decoded)
    checked: int = 0  # bytes of chunks already here, hashed again before they count
    wire: int = 0  # what crossed the link for them (frames, as received)
    error: PackdistError | None = None
    done: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


class PackagePulls:
    def __init__(
        self,
        db: StoreRunner,
        library: ContentLibrary,
        parent_url: str,
        token: str,
        streams: Callable[[], ChunkStreams],
        keys: Callable[[], list[VerifyKey]],
    ) -> None:
        self.db, self.library, self.streams, self.keys = db, library, streams, keys
        self.url = parent_url
        self._auth = {"Authorization": f"Bearer {token}", HOLDER_HEADER: "site"}
        self.pulls: dict[str, Pull] = {}

    def verify(self, manifest_bytes: bytes, signature: bytes) -> Manifest:
        """The manifest, if a key this site trusts signed it (BadSignature otherwise)."""
        for key in self.keys():
            try:
                key.verify(signature, manifest_bytes)
            except BadSignature:
                continue
            return Manifest.parse(manifest_bytes)
        raise BadSignature(
            "manifest signature does not verify with the parent's key nor any above it"
        )

    def ensure(self, manifest: Manifest, signature: bytes, server: str) -> Pull:
        """The pull of this package: the one under way, or a new one (the first, or after
        one that failed)."""
        pid = manifest.id.hex
        pull = self.pulls.get(pid)
        if pull is not None and (pull.running or pull.done):
            return pull
        pull = Pull(pid, manifest.ref, server)
        self.pulls[pid] = pull
        pull.task = asyncio.create_task(self._run(pull, manifest, signature), name=f"pull {pid}")
        return pull

    async def _run(self, pull: Pull, manifest: Manifest, signature: bytes) -> None:
        try:
            prepare = await self._pull(pull, manifest, signature)
            pull.done = True
            if prepare is not None:  # for this site's own servers: after the parent's wait
                await self._prepare(pull, manifest, *prepare)
        except PackdistError as exc:
            pull.error = exc
            log.warning("fetching %s from the parent failed: %s", pull.ref, exc.message)
        except Exception as exc:  # a bug must still end as a visible, retried failure
            log.exception("fetching %s from the parent crashed", pull.ref)
            pull.error = TransferError(f"internal error fetching from the parent: {exc!r}")

    async def _prepare(
        self, pull: Pull, manifest: Manifest, earlier: Manifest, new: dict[Digest, int]
    ) -> None:
        """Deltas of the version just held against the one before (best effort: servers'
        requests encode what is not prepared)."""
        try:
            done = await asyncio.to_thread(prepare_against, self.library, manifest, earlier, new)
        except Exception as exc:  # the package is held: this only costs speed
            log.warning("%s: deltas not prepared: %s", pull.ref, exc)
            return
        if done.chunks:
            log.info(
                "%s: deltas against %s prepared for %d chunk(s) in %.1fs",
                pull.ref,
                done.against,
                done.chunks,
                done.seconds,
            )

    async def _pull(
        self, pull: Pull, manifest: Manifest, signature: bytes
    ) -> tuple[Manifest, dict[Digest, int]] | None:
        """Fetch and record the package; the earlier version and the new chunks whose deltas
        are worth preparing, if any."""
        if await self.db(lambda s: s.package_by_id(pull.package_id)) is not None:
            return None  # held already (another worker, an earlier pull that got this far)
        sizes = manifest.chunk_sizes()
        known = await self.db(lambda s: s.known_chunks(list(sizes)))
        unrecorded = {d: n for d, n in sizes.items() if d not in known}
        missing = await asyncio.to_thread(self._not_on_disk, pull, unrecorded)
        pull.total = sum(unrecorded[d] for d in missing)
        started = time.monotonic()
        if missing:
            log.info(
                "fetching %s from the parent: %d chunk(s), %d bytes (%d already here)",
                pull.ref,
                len(missing),
                pull.total,
                len(sizes) - len(missing),
            )
        earlier = await self.db(lambda s: earlier_versions(s, manifest))
        bases = await asyncio.to_thread(self._bases, manifest, missing, earlier)
        stop = StreamStop()
        try:
            for i in range(0, len(missing), BATCH):
                batch = missing[i : i + BATCH]
                await asyncio.to_thread(self._fetch, pull, batch, sizes, bases, stop)
        except asyncio.CancelledError:
            stop.stop()
            raise
        await asyncio.to_thread(self.library.sync)
        now = time.time()
        try:
            await self.db(lambda s: Service(s).add_package(manifest, signature, unrecorded, now))
        except AlreadyExists:  # another worker of this site recorded it meanwhile: held
            if await self.db(lambda s: s.package_by_id(pull.package_id)) is None:
                raise
        log.info(
            "%s from the parent: %d bytes on the link in %.1fs",
            pull.ref,
            pull.wire,
            time.monotonic() - started,
        )
        return (earlier[0], {d: sizes[d] for d in missing}) if earlier and missing else None

    def _not_on_disk(self, pull: Pull, chunks: dict[Digest, int]) -> list[Digest]:
        """Those of ``chunks`` the library lacks (one an earlier pull wrote counts once it
        hashes to its digest again)."""
        missing = []
        for d, n in chunks.items():
            if self.library.check(d, n) is not None:
                missing.append(d)
            pull.checked += n  # progress the parent sees: a long re-hash is not a stall
        return missing

    def _bases(
        self, manifest: Manifest, missing: list[Digest], earlier: list[Manifest]
    ) -> dict[Digest, list[Digest]]:
        """For each chunk to fetch, the chunks of an earlier version in the library that it
        probably resembles (:mod:`packdist.core.bases`): each read back intact now, so that
        the parent may send a delta this site can decode."""
        if not earlier:
            return {}
        wanted = set(missing)
        place: dict[Digest, tuple[str, int, int]] = {}
        for path, offset, c in manifest.chunk_places():
            if c.digest in wanted and c.digest not in place:
                place[c.digest] = (path, offset, c.size)
        versions = [
            {path: ([start for start, _, _ in cs], cs) for path, cs in files_of(m).items()}
            for m in earlier
        ]
        intact: dict[Digest, bool] = {}
        out: dict[Digest, list[Digest]] = {}
        for digest, (path, offset, size) in place.items():
            for files in versions:
                if path not in files:
                    continue
                found = [d for _, _, d in covering(*files[path], offset, size)]
                for d in found:
                    if d not in intact:
                        intact[d] = self._base_bytes([d]) is not None
                good = [d for d in found if intact[d]]
                if good:
                    out[digest] = good
                    break
        return out

    def _base_bytes(self, digests: list[Digest]) -> bytes | None:
        """The library's bytes of ``digests``, each verified; None if one is not intact."""
        parts = []
        for d in digests:
            data = self.library.intact(d)
            if data is None:
                return None
            parts.append(data)
        return b"".join(parts)

    def _fetch(
        self,
        pull: Pull,
        batch: list[Digest],
        sizes: dict[Digest, int],
        bases: dict[Digest, list[Digest]],
        stop: StreamStop,
    ) -> None:
        """One stream of chunks from the parent, each verified and written as it arrives
        (in a worker thread)."""
        wanted = set(batch)
        named = {d: bases[d] for d in batch if d in bases}
        body: dict[str, object] = {
            "digests": [d.hex for d in batch],
            "accept": [e.label for e in Encoding],
            "package": pull.package_id,  # the parent serves a child only what it sent it
        }
        if named:
            body["bases"] = {d.hex: [b.hex for b in bs] for d, bs in named.items()}
        for frame in self.streams().post(f"{self.url}/v1/chunks", self._auth, body, stop):
            if frame.digest not in wanted or frame.size != sizes[frame.digest]:
                raise TransferError(
                    f"the parent sent chunk {frame.digest.short}… that was not asked for"
                )
            wanted.discard(frame.digest)
            base = None
            if frame.encoding == Encoding.ZSTD_BASE:  # read (and verified) again: as named
                base = self._base_bytes(named.get(frame.digest, []))
                if not base:
                    raise TransferError(
                        f"cannot decode chunk {frame.digest.short}… from {self.url}: its base"
                        " chunks are no longer intact here"
                    )
            data = codec.decode(
                frame.encoding, frame.payload, frame.size, frame.digest, base, self.url
            )
            frame.digest.verify(data)
            self.library.write(frame.digest, data, start_writeback=True)
            pull.received += frame.size
            pull.wire += frame.wire_bytes
        if wanted:
            raise TransferError(f"the parent's stream ended with {len(wanted)} chunk(s) missing")
