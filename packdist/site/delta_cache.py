"""Deltas computed once: a chunk's zstd encoding against a set of base chunks, kept on disk.

An agent that holds version 1 and installs version 2 names, for each chunk it must fetch,
the chunks of version 1 it probably resembles (:mod:`packdist.core.bases`); the site sends
the chunk zstd-compressed against them. Encoding against a raw dictionary costs about a
millisecond per 128 KiB chunk (its tables are built for each), and a fleet of a thousand
servers on version 1 names the same bases for the same chunk a thousand times. So the
encoding is kept here, keyed by the chunk and the exact list of bases, and each later
request for the same delta reads a few KiB instead of encoding again.
:mod:`packdist.site.delta_prepare` fills it when a version is imported.

A kept delta is an optimisation, never a source of truth:

* Each file holds the BLAKE3 of what follows it: a damaged or torn file is a miss (and is
  removed), so a bad disk block cannot make every agent fail the same chunk. The agent still
  verifies each decoded chunk against its digest, as for any frame.
* A delta that does not pay (the chunk goes raw) is kept too, as an empty payload, so the
  site does not try again for each agent.
* Writes go to a temporary name renamed into place and are never synced: a crash loses
  entries, not correctness. A write that fails (a full disk) is dropped with one log line.
* At most :data:`PER_CHUNK` entries are kept per chunk (a server naming bases in every
  order cannot fill the disk); beyond that, deltas are encoded at each request, as before.

Entries are small (at most 0.9x their chunk, most a few KiB) and, like the library's
chunks, are not pruned otherwise. ``library/deltas`` can be deleted at any time (the site
only encodes again). Its entries sit under a format version (``v1``): a change to how a
delta is made moves to a new folder, so no entry of the old format is ever read as new.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import blake3

from packdist.core.codec import Encoding
from packdist.core.digest import Digest

log = logging.getLogger("packdist.site")

CHECK_SIZE = 32  # bytes of BLAKE3 before the payload
KEY_SIZE = 16  # bytes of the bases' digest in an entry's name
FORMAT = "v1"  # how a delta is made: codec.BASE_LEVEL, the bases joined in the order named
PER_CHUNK = 4  # entries kept per chunk, at most (a version or two of bases, each way)

Key = tuple[Digest, tuple[Digest, ...]]


class DeltaCache:
    """The deltas kept under ``root`` (``library/deltas`` of a site), in 256 shards."""

    _failed_once = False  # per process: a full disk would flood the log

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = os.path.join(os.fspath(root), FORMAT)

    def _path(self, digest: Digest, bases: Sequence[Digest]) -> str:
        key = blake3.blake3(b"".join(b.raw for b in bases)).hexdigest(length=KEY_SIZE)
        return os.path.join(self._root, digest.shard, f"{digest.hex}.{key}")

    def get(self, digest: Digest, bases: Sequence[Digest]) -> tuple[Encoding, bytes] | None:
        """The kept encoding of ``digest`` against ``bases`` (in that order): ``ZSTD_BASE``
        and its payload, or ``RAW`` and ``b""`` (a delta that does not pay); None if none is
        kept intact."""
        path = self._path(digest, bases)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        check, payload = data[:CHECK_SIZE], data[CHECK_SIZE:]
        if len(check) != CHECK_SIZE or blake3.blake3(payload).digest() != check:
            log.info("kept delta %s damaged: removed, encoding again", os.path.basename(path))
            try:
                os.unlink(path)
            except OSError:
                pass
            return None
        return (Encoding.ZSTD_BASE, payload) if payload else (Encoding.RAW, b"")

    def put(
        self, digest: Digest, bases: Sequence[Digest], encoding: Encoding, payload: bytes
    ) -> None:
        """Keep the encoding of ``digest`` against ``bases``: ``ZSTD_BASE`` and its payload,
        or ``RAW`` (kept as "does not pay"). Never raises: a cache that cannot be written is
        only slower."""
        kept = payload if encoding == Encoding.ZSTD_BASE else b""
        path = self._path(digest, bases)
        tmp = f"{path}.{os.getpid()}-{threading.get_native_id()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if self._entries(digest) >= PER_CHUNK:
                return
            with open(tmp, "wb") as f:
                f.write(blake3.blake3(kept).digest() + kept)
            os.rename(tmp, path)
        except OSError as exc:
            if not DeltaCache._failed_once:
                DeltaCache._failed_once = True
                log.warning("cannot keep a delta in %s: %s", self._root, exc.strerror or exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _entries(self, digest: Digest) -> int:
        """Entries kept for ``digest`` (read only on a miss, next to a millisecond of zstd)."""
        prefix = f"{digest.hex}."
        with os.scandir(os.path.join(self._root, digest.shard)) as found:
            return sum(1 for e in found if e.name.startswith(prefix) and "tmp" not in e.name)


class OneAtATime:
    """Lets one thread at a time work on a key: agents asking for the same delta at once
    wait for the first to encode and keep it, then read it (a fleet's first minute)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Key, tuple[threading.Lock, int]] = {}

    @contextmanager
    def one(self, digest: Digest, bases: Sequence[Digest]) -> Iterator[None]:
        key = (digest, tuple(bases))
        with self._lock:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
