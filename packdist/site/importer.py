"""Imports a directory tree into the content library as ``NAME@VERSION``.

Order of work, so that a refusal or a crash leaves nothing visible:

1. walk the whole tree (metadata only) and refuse what cannot be packaged;
2. if ``NAME@VERSION`` exists, hash without writing and compare: same content is a no-op,
   other content is refused;
3. cut, hash and write the chunks the library does not hold (a bounded pipeline, so memory
   stays flat whatever the tree's size);
4. ``syncfs`` the library, then record chunks and the signed manifest in one transaction.

An interruption before step 4 commits removes the chunks this import wrote; a hard crash can
leave unreferenced chunk files (perhaps partial: a later import replaces them whole), never
a referenced one that is not fully written.

The pipeline of step 3 lives in ``import_pipeline.py``. Step 4's ``syncfs`` runs on a
thread of its own while the calling thread builds and signs the manifest, which needs no
disk; the package is recorded only once both are done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from packdist.core.chunking import Chunker
from packdist.core.digest import Digest
from packdist.core.manifest import ChunkRef, Entry, EntryType, Manifest, SignedManifest
from packdist.core.names import check_package_name, check_version
from packdist.errors import AlreadyExists, PackdistError, TreeRefused
from packdist.service import Service
from packdist.site.delta_prepare import Prepared, prepare_deltas
from packdist.site.home import SiteHome
from packdist.site.import_pipeline import Pipeline
from packdist.site.library import ContentLibrary
from packdist.site.walker import SourceEntry, walk
from packdist.store.base import PackageRecord


def _manifest(name: str, version: str, source: list[SourceEntry], chunker: Chunker) -> Manifest:
    """The manifest of ``source`` (hashing only, nothing written)."""
    entries: list[Entry] = []
    for s in source:
        if s.type is EntryType.FILE:
            refs: list[ChunkRef] = []
            try:
                for data in chunker.cut_file(s.abspath):
                    refs.append(ChunkRef(Digest.of(data), len(data)))
            except OSError as exc:
                raise TreeRefused(f"{s.abspath}: cannot read ({exc.strerror})") from exc
            entries.append(_file_entry(s, refs))
        else:
            entries.append(Entry(s.path, s.type, target=s.target))
    return Manifest.build(name, version, entries, chunker.params)


def _file_entry(s: SourceEntry, refs: list[ChunkRef]) -> Entry:
    return Entry(
        s.path,
        s.type,
        size=sum(r.size for r in refs),
        executable=s.executable,
        mtime_ns=s.mtime_ns,
        chunks=tuple(refs),
    )


def _import(
    name: str, version: str, source: list[SourceEntry], pipeline: Pipeline, library: ContentLibrary
) -> tuple[Manifest, _Sync]:
    """Cut, hash and write every file of ``source``; returns the manifest and the syncfs
    started once the last chunk was written (join it before recording anything)."""
    ranges = [pipeline.add_file(s.abspath) if s.type is EntryType.FILE else (0, 0) for s in source]
    pipeline.finish()
    sync = _Sync(library)
    digests, sizes = pipeline.digests, pipeline.sizes
    entries: list[Entry] = []
    for s, (first, last) in zip(source, ranges, strict=True):
        if s.type is EntryType.FILE:
            refs = []
            for i in range(first, last):
                digest = digests[i]
                assert digest is not None  # finish() waited for every segment's hashes
                refs.append(ChunkRef(digest, sizes[i]))
            entries.append(_file_entry(s, refs))
        else:
            entries.append(Entry(s.path, s.type, target=s.target))
    return Manifest.build(name, version, entries, pipeline.chunker.params), sync


class _Sync:
    """``ContentLibrary.sync`` on a thread of its own, started at once."""

    def __init__(self, library: ContentLibrary) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(library,), name="import-syncfs", daemon=True
        )
        self._thread.start()

    def _run(self, library: ContentLibrary) -> None:
        try:
            library.sync()
        except BaseException as exc:
            self._error = exc

    def wait(self) -> None:
        """Return once every chunk written before the start is on disk; raise if not."""
        self._thread.join()
        if self._error is not None:
            raise self._error


def import_tree(
    home: SiteHome,
    root: Path,
    name: str,
    version: str,
    chunker: Chunker | None = None,
    prepared: Callable[[Prepared | str], None] | None = None,
) -> tuple[PackageRecord, bool]:
    """Import ``root``; returns the package and whether it was newly created.

    With ``prepared``, a new version's deltas against the one before are prepared once it
    is recorded (:mod:`packdist.site.delta_prepare`), and ``prepared`` is told what was
    done, or in words why it could not be (the import stands either way)."""
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
            fresh = _manifest(name, version, source, Chunker(stored.chunker))
            if stored.same_content(fresh):
                return existing, False
            raise AlreadyExists(
                f"{name}@{version} already exists with different content (choose a new version)"
            )
        library = home.library
        pipeline = Pipeline(library, store.known_chunks, chunker)
        try:
            manifest, sync = _import(name, version, source, pipeline, library)
            signed = SignedManifest.sign(manifest, home.signing_key())
            sync.wait()
            record = Service(store).add_package(
                manifest, signed.signature, pipeline.written, time.time()
            )
        except BaseException:
            pipeline.abort(lambda ds: set(ds) - store.known_chunks(ds))
            raise
        if prepared is not None:
            try:
                prepared(prepare_deltas(library, store, manifest, pipeline.written))
            except Exception as exc:  # the package is recorded: this only costs speed
                prepared(exc.message if isinstance(exc, PackdistError) else str(exc) or repr(exc))
        return record, True
    finally:
        store.close()
