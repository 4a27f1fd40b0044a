"""The content library: chunks stored once each, by BLAKE3 digest, in sharded folders.

A chunk is written to a temporary name in its shard and renamed into place, so a reader
never sees a partial chunk under a digest name. Durability comes in batches: the importer
calls :meth:`ContentLibrary.sync` (one ``syncfs``) before the database records any chunk, and
only chunks recorded in the database are ever referenced or served.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from packdist.core import fsutil
from packdist.core.digest import Digest
from packdist.core.fsutil import syncfs
from packdist.errors import HashMismatch, NotFound

if TYPE_CHECKING:
    from packdist.site.delta_cache import DeltaCache


class ContentLibrary:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = os.fspath(root)

    def create(self) -> None:
        self.root.mkdir(mode=0o755)
        for i in range(256):
            (self.root / f"{i:02x}").mkdir()

    def path(self, digest: Digest) -> Path:
        return self.root / digest.shard / digest.hex

    @property
    def deltas(self) -> DeltaCache:
        """Chunks' encodings against base chunks, kept once computed (not chunks)."""
        from packdist.site.delta_cache import DeltaCache  # zstd: not for every command

        return DeltaCache(self.root / "deltas")

    def exists(self, digest: Digest) -> bool:
        return self.path(digest).exists()

    def write(
        self, digest: Digest, data: bytes | bytearray | memoryview, *, start_writeback: bool = False
    ) -> None:
        """Store ``data`` (already hashed to ``digest``) under its digest.

        With ``start_writeback`` the kernel starts writing the chunk to disk at once
        (``sync_file_range``, asynchronous), so a later :meth:`sync` has little left to do.
        A failed write leaves no temporary behind.
        """
        shard = os.path.join(self._root, digest.shard)
        name = digest.hex
        final = os.path.join(shard, name)
        tmp = os.path.join(shard, f".{name}.{os.getpid()}-{threading.get_native_id()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if start_writeback:
                    fsutil.start_writeback(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def discard(self, digest: Digest) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass

    def read(self, digest: Digest) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"chunk {digest.short}… is missing from the library") from exc

    def intact(self, digest: Digest) -> bytes | None:
        """The chunk's bytes if it is here and hashes to its digest; None otherwise (a base
        for a delta: a damaged one would only make a chunk that fails to verify)."""
        try:
            data = self.read(digest)
        except (NotFound, OSError):
            return None
        return data if digest.holds(data) else None

    def check(self, digest: Digest, size: int) -> str | None:
        """Return what is wrong with a stored chunk (``None`` if it is sound)."""
        try:
            data = self.read(digest)
        except NotFound:
            return "missing"
        if len(data) != size:
            return f"size {len(data)}, expected {size}"
        try:
            digest.verify(data)
        except HashMismatch:
            return "corrupt (hash mismatch)"
        return None

    def sync(self) -> None:
        syncfs(self.root)
