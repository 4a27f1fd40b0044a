"""The import's pipeline: cut, hash and write a tree's new chunks (see ``importer.py``).

The calling thread reads files into large *segments* (several files share one; a big file
spans several) and cuts them into chunks, which costs little; worker threads hash whole
segments and write the new chunks straight from the segment, so no chunk is copied in user
space. Hashing, reading and writing all release the GIL, so the work spreads over the
cores. Only the calling thread touches the database: it looks up each hashed segment's
digests in one query and hands the chunks the library lacks to the workers. A segment is
reused once its chunks are written, so memory is bounded by ``BUFFER_BYTES`` whatever the
tree. Measurements: ``docs/chunking.md`` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from packdist.core import fsutil
from packdist.core.chunking import Chunker
from packdist.core.digest import Digest
from packdist.errors import TreeRefused
from packdist.site.library import ContentLibrary

# Threads hashing segments and writing chunk files: one per core, 2 to 4 (the calling
# thread cuts at ~2 GB/s, so more workers than that would mostly wait).
WORKERS = max(2, min(4, os.cpu_count() or 2))
SEGMENT_BYTES = 8 * 1024 * 1024  # one read buffer (at least 4 max-size chunks)
BUFFER_BYTES = 48 * 1024 * 1024  # all segments together: the pipeline's memory bound

_HASH, _WRITE, _HASHED, _FREED = range(4)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class ChunkFiles:
    """Writes new chunk files into the library's shards, as few system calls as it can.

    A chunk the library's database does not hold is created under its final name with
    ``O_EXCL``, relative to its shard's open directory: one ``openat``, ``write``, a
    writeback hint and ``close``, where :meth:`ContentLibrary.write` also builds a temporary
    name and renames it (a fifth more CPU for 9,000 chunk writes, measured). The name may
    hold a partial chunk until the write ends, which nothing reads: chunks are read only
    once the database records them, after the import's ``syncfs``. A name that exists
    already (left by a killed import, or being written by a concurrent one) is replaced
    whole by :meth:`ContentLibrary.write`, so it is never trusted and never truncated.
    """

    def __init__(self, library: ContentLibrary) -> None:
        self.library = library
        self._shards: dict[str, int] = {}
        self._lock = threading.Lock()
        #: the files this import wrote whole, by the (device, inode) they got: what an
        #: abort may remove (a name another import wrote since holds another inode)
        self.created: dict[Digest, tuple[int, int]] = {}

    def write(self, digest: Digest, data: memoryview) -> None:
        name = digest.hex
        try:
            fd = os.open(name, _NEW_FILE, 0o644, dir_fd=self._shard(name[:2]))
        except FileExistsError:
            self.library.write(digest, data, start_writeback=True)
            with contextlib.suppress(OSError):  # replaced since: not ours to remove
                st = os.stat(self.library.path(digest), follow_symlinks=False)
                self._created(digest, st)
            return
        try:
            view = data
            while view:
                view = view[os.write(fd, view) :]
            fsutil.start_writeback(fd)
            self._created(digest, os.fstat(fd))
        except BaseException:
            self._remove_own(name, fd)
            raise
        finally:
            os.close(fd)

    def _created(self, digest: Digest, st: os.stat_result) -> None:
        with self._lock:
            self.created[digest] = (st.st_dev, st.st_ino)

    def discard_own(self, digest: Digest) -> None:
        """Remove the chunk file this import wrote, unless its name now holds another's
        (a concurrent import's, which that import may be about to record)."""
        mine = self.created.get(digest)
        path = self.library.path(digest)
        try:
            there = os.stat(path, follow_symlinks=False)
            if mine == (there.st_dev, there.st_ino):
                os.unlink(path)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            for fd in self._shards.values():
                os.close(fd)
            self._shards.clear()

    def _shard(self, shard: str) -> int:
        fd = self._shards.get(shard)
        if fd is None:
            with self._lock:
                fd = self._shards.get(shard)
                if fd is None:
                    path = os.path.join(self.library.root, shard)
                    fd = self._shards[shard] = os.open(
                        path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                    )
        return fd

    def _remove_own(self, name: str, fd: int) -> None:
        """Remove a chunk file whose write failed, unless its name now holds another's."""
        shard = self._shard(name[:2])
        try:
            ours, there = os.fstat(fd), os.stat(name, dir_fd=shard, follow_symlinks=False)
            if (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino):
                os.unlink(name, dir_fd=shard)
        except OSError:
            pass


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


class Pipeline:
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
        self._files = ChunkFiles(library)
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
                    start += length
                self.sizes += lengths
                self.digests += [None] * len(lengths)
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
        """Remove the files this import wrote, unless another import has recorded their
        chunk since or written its own file under the name (it may be about to record it);
        chunks it meant to write but did not are left alone."""
        self._cancelled = True
        self._stop()
        for digest in still_unrecorded(list(self._files.created)):
            self._files.discard_own(digest)

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
        self.digests[seg.first : seg.first + len(seg.digests)] = seg.digests
        for i, digest in enumerate(seg.digests):
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
        self._threads = []
        self._files.close()

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
                    self._files.write(digest, seg.view[offset : offset + length])
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
