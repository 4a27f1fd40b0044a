"""Imports a directory tree into the content library as ``NAME@VERSION``.

Order of work, so that a refusal or a crash leaves nothing visible:

1. walk the whole tree (metadata only) and refuse what cannot be packaged;
2. if ``NAME@VERSION`` exists, hash without writing and compare: same content is a no-op,
   other content is refused;
3. cut, hash and write the chunks the library does not hold (a bounded pipeline, so memory
   stays flat whatever the tree's size);
4. ``syncfs`` the library, then record chunks and the signed manifest in one transaction.

An interruption before step 4 commits removes the chunks this import wrote; a hard crash can
leave unreferenced chunk files, never a referenced one that is not fully written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from packdist.core.chunking import Chunker
from packdist.core.digest import Digest
from packdist.core.manifest import ChunkRef, Entry, EntryType, Manifest, SignedManifest
from packdist.core.names import check_package_name, check_version
from packdist.errors import AlreadyExists, TreeRefused
from packdist.site.home import SiteHome
from packdist.site.library import ContentLibrary
from packdist.site.walker import SourceEntry, walk
from packdist.store.base import PackageRecord

WRITERS = 2
MAX_IN_FLIGHT = 64  # chunks queued for writing; bounds memory to MAX_IN_FLIGHT * max chunk


class _ChunkWriter:
    """Writes new chunks on a small thread pool, at most MAX_IN_FLIGHT at a time."""

    def __init__(self, library: ContentLibrary, known: Callable[[Digest], bool]) -> None:
        self.library = library
        self.known = known
        self.written: dict[Digest, int] = {}
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="chunk-writer")
        self._futures: list[Future[None]] = []

    def add(self, digest: Digest, data: memoryview) -> None:
        if digest in self.written or self.known(digest):
            return
        self.written[digest] = len(data)
        payload = bytes(data)  # the chunker reuses its buffer
        self._slots.acquire()
        self._futures.append(self._pool.submit(self._write, digest, payload))
        if len(self._futures) > 4 * MAX_IN_FLIGHT:
            self._reap()

    def _write(self, digest: Digest, payload: bytes) -> None:
        try:
            self.library.write(digest, payload)
        finally:
            self._slots.release()

    def _reap(self) -> None:
        done = [f for f in self._futures if f.done()]
        self._futures = [f for f in self._futures if not f.done()]
        for f in done:
            f.result()

    def finish(self) -> None:
        self._pool.shutdown(wait=True)
        for f in self._futures:
            f.result()

    def abort(self, still_unrecorded: Callable[[list[Digest]], set[Digest]]) -> None:
        """Remove what this import wrote, unless another import has recorded it since."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for digest in still_unrecorded(list(self.written)):
            self.library.discard(digest)


def _manifest(
    name: str,
    version: str,
    source: list[SourceEntry],
    chunker: Chunker,
    sink: Callable[[Digest, memoryview], None] | None,
) -> Manifest:
    entries: list[Entry] = []
    for s in source:
        if s.type is EntryType.FILE:
            refs: list[ChunkRef] = []
            size = 0
            try:
                for data in chunker.cut_file(s.abspath):
                    digest = Digest.of(data)
                    refs.append(ChunkRef(digest, len(data)))
                    size += len(data)
                    if sink is not None:
                        sink(digest, data)
            except OSError as exc:
                raise TreeRefused(f"{s.abspath}: cannot read ({exc.strerror})") from exc
            entries.append(
                Entry(
                    s.path,
                    s.type,
                    size=size,
                    executable=s.executable,
                    mtime_ns=s.mtime_ns,
                    chunks=tuple(refs),
                )
            )
        else:
            entries.append(Entry(s.path, s.type, target=s.target))
    return Manifest.build(name, version, entries, chunker.params)


def import_tree(
    home: SiteHome, root: Path, name: str, version: str, chunker: Chunker | None = None
) -> tuple[PackageRecord, bool]:
    """Import ``root``; returns the package and whether it was newly created."""
    check_package_name(name)
    check_version(version)
    chunker = chunker or Chunker()
    source = walk(root)
    store = home.store()
    try:
        existing = store.find_package(name, version)
        if existing is not None:
            data, _ = store.package_manifest(existing.id)
            stored = Manifest.parse(data)
            fresh = _manifest(name, version, source, Chunker(stored.chunker), None)
            if stored.same_content(fresh):
                return existing, False
            raise AlreadyExists(
                f"{name}@{version} already exists with different content (choose a new version)"
            )
        known_cache: dict[Digest, bool] = {}

        def known(d: Digest) -> bool:
            if d not in known_cache:
                known_cache[d] = bool(store.known_chunks([d]))
            return known_cache[d]

        library = home.library
        writer = _ChunkWriter(library, known)
        try:
            manifest = _manifest(name, version, source, chunker, writer.add)
            writer.finish()
            signed = SignedManifest.sign(manifest, home.signing_key())
            library.sync()
            record = store.add_package(manifest, signed.signature, writer.written)
        except BaseException:
            writer.abort(lambda ds: set(ds) - store.known_chunks(ds))
            raise
        return record, True
    finally:
        store.close()
