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

The pipeline of step 3 (see ``docs/chunking.md`` for measurements): the calling thread reads
files into large *segments* (several files share one; a big file spans several) and cuts them
into chunks, which costs little; worker threads hash whole segments and write the new chunks
straight from the segment, so no chunk is copied in user space. Hashing, reading and writing
all release the GIL, so the work spreads over the cores. Only the calling thread touches the
database: it looks up each hashed segment's digests in one query and hands the chunks the
library lacks to the workers. A segment is reused once its chunks are written, so memory is
bounded by ``BUFFER_BYTES`` whatever the tree.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from packdist.core.chunking import Chunker
from packdist.core.digest import Digest
from packdist.core.manifest import ChunkRef, Entry, EntryType, Manifest, SignedManifest
from packdist.core.names import check_package_name, check_version
from packdist.errors import AlreadyExists, TreeRefused
from packdist.service import Service
from packdist.site.home import SiteHome
from packdist.site.library import ContentLibrary
from packdist.site.walker import SourceEntry, walk
from packdist.store.base import PackageRecord

# Threads hashing segments and writing chunk files: one per core, 2 to 4 (the calling
# thread cuts at ~2 GB/s, so more workers than that would mostly wait).
WORKERS = max(2, min(4, os.cpu_count() or 2))
SEGMENT_BYTES = 8 * 1024 * 1024  # one read buffer (at least 4 max-size chunks)
BUFFER_BYTES = 48 * 1024 * 1024  # all segments together: the pipeline's memory bound

_HASH, _WRITE, _HASHED, _FREED = range(4)


class _Segment:
    """A read buffer and the chunks cut in it (consecutive chunks of the tree)."""

    __slots__ = ("buf", "digests", "fill", "first", "lengths", "offsets", "outstanding", "view")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.fill = 0  # bytes read into it
        self.first = 0  # number of its first chunk in the tree
        self.offsets: list[int] = []
        self.lengths: list[int] = []
        self.digests: list[Digest] = []
        self.outstanding = 0  # chunk writes not yet done

    def reset(self) -> None:
        self.fill = self.first = self.outstanding = 0
        self.offsets = []
        self.lengths = []
        self.digests = []


class _Pipeline:
    """Cuts files on the calling thread; hashes and writes new chunks on worker threads."""

    def __init__(
        self,
        library: ContentLibrary,
        known_chunks: Callable[[list[Digest]], set[Digest]],
        chunker: Chunker,
    ) -> None:
        self.library = library
        self.known_chunks = known_chunks
        self.chunker = chunker
        self.written: dict[Digest, int] = {}  # chunks this import writes (digest -> size)
        self.digests: list[Digest | None] = []  # every chunk of the tree, in order
        self.sizes: list[int] = []
        self._known: set[Digest] = set()  # recorded in the database already
        self._max = chunker.params.max
        self._segment_size = max(SEGMENT_BYTES, 4 * self._max)
        self._segments_left = max(3, BUFFER_BYTES // self._segment_size)
        self._free: list[_Segment] = []
        self._sealed = 0  # segments handed to the workers and not free yet
        self._current: _Segment | None = None
        self._tasks: queue.SimpleQueue[tuple[int, _Segment, Digest | None, int, int] | None] = (
            queue.SimpleQueue()
        )
        self._events: queue.SimpleQueue[tuple[int, _Segment]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._cancelled = False
        self._threads = [
            threading.Thread(target=self._work, name=f"import-worker-{i}", daemon=True)
            for i in range(WORKERS)
        ]
        for t in self._threads:
            t.start()

    # --- calling thread -------------------------------------------------------------------

    def add_file(self, path: Path) -> tuple[int, int]:
        """Read and cut one file; returns the range of its chunks' numbers in the tree."""
        self._drain(block=False)
        first = len(self.sizes)
        seg = self._current
        if seg is None or len(seg.buf) - seg.fill < self._max:
            if seg is not None:
                self._seal(seg)
            seg = self._current = self._segment()
        start = seg.fill
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise TreeRefused(f"{path}: cannot read ({exc.strerror})") from exc
        with f:
            while True:
                eof = False
                while seg.fill < len(seg.buf):
                    try:
                        n = f.readinto(seg.view[seg.fill :])
                    except OSError as exc:
                        raise TreeRefused(f"{path}: cannot read ({exc.strerror})") from exc
                    if not n:
                        eof = True
                        break
                    seg.fill += n
                lengths = self.chunker.cut_window(seg.view[start : seg.fill], eof)
                if lengths and not seg.lengths:
                    seg.first = len(self.sizes)
                for length in lengths:
                    seg.offsets.append(start)
                    seg.lengths.append(length)
                    self.sizes.append(length)
                    self.digests.append(None)
                    start += length
                if eof:
                    return first, len(self.sizes)
                # The segment is full: carry the uncut tail (< max) over to a fresh one.
                nxt = self._segment()
                tail = seg.fill - start
                nxt.buf[:tail] = seg.view[start : seg.fill]
                nxt.fill = tail
                seg.fill = start
                self._seal(seg)
                seg = self._current = nxt
                start = 0

    def finish(self) -> None:
        """Wait until every new chunk is written (not yet durable: see ContentLibrary.sync)."""
        if self._current is not None:
            self._seal(self._current)
            self._current = None
        while self._sealed:
            self._drain(block=True)
        self._stop()
        self._raise_error()

    def abort(self, still_unrecorded: Callable[[list[Digest]], set[Digest]]) -> None:
        """Remove what this import wrote, unless another import has recorded it since."""
        self._cancelled = True
        self._stop()
        for digest in still_unrecorded(list(self.written)):
            self.library.discard(digest)

    def _segment(self) -> _Segment:
        while True:
            if self._free:
                return self._free.pop()
            if self._segments_left:
                self._segments_left -= 1
                return _Segment(self._segment_size)
            self._drain(block=True)

    def _seal(self, seg: _Segment) -> None:
        if not seg.lengths:
            self._release(seg)
            return
        self._sealed += 1
        self._tasks.put((_HASH, seg, None, 0, 0))

    def _release(self, seg: _Segment) -> None:
        seg.reset()
        self._free.append(seg)

    def _drain(self, *, block: bool) -> None:
        """Handle the workers' news: dispatch writes for hashed segments, reuse freed ones."""
        while True:
            try:
                kind, seg = self._events.get(block=block)
            except queue.Empty:
                return
            block = False
            self._raise_error()
            if kind == _FREED:
                self._sealed -= 1
                self._release(seg)
            else:
                self._dispatch(seg)

    def _dispatch(self, seg: _Segment) -> None:
        fresh: dict[Digest, tuple[int, int]] = {}
        for i, digest in enumerate(seg.digests):
            self.digests[seg.first + i] = digest
            if digest not in self.written and digest not in self._known and digest not in fresh:
                fresh[digest] = (seg.offsets[i], seg.lengths[i])
        known = self.known_chunks(list(fresh)) if fresh else set()
        self._known |= known
        todo = [(d, o, n) for d, (o, n) in fresh.items() if d not in known]
        if not todo:
            self._sealed -= 1
            self._release(seg)
            return
        seg.outstanding = len(todo)
        for digest, offset, length in todo:
            self.written[digest] = length
            self._tasks.put((_WRITE, seg, digest, offset, length))

    def _stop(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # --- worker threads -------------------------------------------------------------------

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            kind, seg, digest, offset, length = task
            if kind == _HASH:
                try:
                    if self._error is None and not self._cancelled:
                        view = seg.view
                        seg.digests = [
                            Digest.of(view[o : o + n])
                            for o, n in zip(seg.offsets, seg.lengths, strict=True)
                        ]
                except BaseException as exc:
                    self._fail(exc)
                self._events.put((_HASHED, seg))
                continue
            try:
                if digest is not None and self._error is None and not self._cancelled:
                    self.library.write(
                        digest, seg.view[offset : offset + length], start_writeback=True
                    )
            except BaseException as exc:
                self._fail(exc)
            with self._lock:
                seg.outstanding -= 1
                done = seg.outstanding == 0
            if done:
                self._events.put((_FREED, seg))

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc


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


def _import(name: str, version: str, source: list[SourceEntry], pipeline: _Pipeline) -> Manifest:
    """Cut, hash and write every file of ``source``; returns the manifest."""
    ranges = [pipeline.add_file(s.abspath) if s.type is EntryType.FILE else (0, 0) for s in source]
    pipeline.finish()
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
    return Manifest.build(name, version, entries, pipeline.chunker.params)


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
            fresh = _manifest(name, version, source, Chunker(stored.chunker))
            if stored.same_content(fresh):
                return existing, False
            raise AlreadyExists(
                f"{name}@{version} already exists with different content (choose a new version)"
            )
        library = home.library
        pipeline = _Pipeline(library, store.known_chunks, chunker)
        try:
            manifest = _import(name, version, source, pipeline)
            signed = SignedManifest.sign(manifest, home.signing_key())
            library.sync()
            record = Service(store).add_package(
                manifest, signed.signature, pipeline.written, time.time()
            )
        except BaseException:
            pipeline.abort(lambda ds: set(ds) - store.known_chunks(ds))
            raise
        return record, True
    finally:
        store.close()
