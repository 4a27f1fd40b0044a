"""Installs a signed manifest: fetch the missing chunks, verify, build, rename into place.

Steps, so that a server holds the whole version or none of it:

1. check the site's signature, then parse the manifest (which validates every path);
2. a version already installed with the same package id is done at once;
3. check free space for the chunks to fetch plus the tree ("disk full: need N, have M");
4. fetch the chunks the cache lacks, in streamed batches; every chunk is verified against
   its digest before it is written to the cache (a chunk received before a crash is kept);
5. build the tree in ``staging/`` (same file system), re-verifying each cached chunk as it is
   copied, ``syncfs``, then one ``rename`` into ``packages/NAME/VERSION``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from packdist.agent.home import AgentHome
from packdist.core.digest import Digest
from packdist.core.fsutil import fsync_dir, human_bytes, syncfs
from packdist.core.manifest import EntryType, Manifest, SignedManifest
from packdist.core.signing import VerifyKey
from packdist.errors import DiskFull, HashMismatch, PackdistError, RemoteError, TransferError

log = logging.getLogger("packdist.agent")

BATCH_BYTES = 32 * 1024 * 1024
BATCH_CHUNKS = 1024
PARALLEL_BATCHES = 3
WRITE_BATCH = 8 * 1024 * 1024

#: streams the requested chunks as (digest, bytes) frames, not yet verified
FetchChunks = Callable[[list[Digest]], AsyncIterator[tuple[Digest, bytes]]]


class InstallState(StrEnum):
    INSTALLING = "installing"  # fetching or building
    INSTALLED = "installed"  # the tree is in place, verified
    FAILED = "failed"  # this attempt failed; ``error`` says why


@dataclass
class Install:
    package_id: str
    ref: str
    bytes_total: int
    state: InstallState = InstallState.INSTALLING
    error: str | None = None
    bytes_received: int = 0
    bytes_present: int = 0
    started_at: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "package_id": self.package_id,
            "package": self.ref,
            "state": self.state.value,
            "error": self.error,
            "bytes_received": self.bytes_received,
            "bytes_done": min(self.bytes_total, self.bytes_present + self.bytes_received),
            "bytes_total": self.bytes_total,
        }


class Installer:
    def __init__(self, home: AgentHome, fetch: FetchChunks) -> None:
        self.home = home
        self._fetch = fetch
        self.installs: dict[str, Install] = {}

    # --- entry points ---------------------------------------------------------------------

    def start(self, data: bytes, signature: bytes, key: VerifyKey) -> Install:
        """Begin (or join) the install of a signed manifest; never blocks on the network."""
        manifest = SignedManifest.verify(data, signature, key).manifest
        pid = manifest.id.hex
        current = self.installs.get(pid)
        if current is not None and current.state is not InstallState.FAILED:
            return current
        inst = Install(pid, manifest.ref, manifest.total_size)
        self.installs[pid] = inst
        if self.home.installed().get(manifest.ref) == pid:
            inst.state = InstallState.INSTALLED
            inst.bytes_present = manifest.total_size
            return inst
        inst.task = asyncio.create_task(self._run(inst, manifest), name=f"install {pid[:12]}")
        return inst

    def status(self, package_id: str) -> Install | None:
        return self.installs.get(package_id)

    def clean_staging(self) -> None:
        """Start-up recovery: half-built trees from a previous run are removed."""
        for leftover in self.home.staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    # --- the install ----------------------------------------------------------------------

    async def _run(self, inst: Install, manifest: Manifest) -> None:
        try:
            await self._install(inst, manifest)
            inst.state = InstallState.INSTALLED
            log.info("installed %s (%s)", inst.ref, inst.package_id[:12])
        except PackdistError as exc:
            inst.state, inst.error = InstallState.FAILED, exc.message
            log.warning("install of %s failed: %s", inst.ref, exc.message)
        except OSError as exc:
            inst.state, inst.error = InstallState.FAILED, _os_error_words(exc)
            log.warning("install of %s failed: %s", inst.ref, inst.error)
        except Exception as exc:  # a bug: say so, never hang
            inst.state, inst.error = InstallState.FAILED, f"internal error in agent: {exc!r}"
            log.exception("install of %s failed", inst.ref)

    async def _install(self, inst: Install, manifest: Manifest) -> None:
        sizes = manifest.chunk_sizes()
        missing = await asyncio.to_thread(
            lambda: [d for d in sizes if not self.home.chunk_path(d).exists()]
        )
        missing_bytes = sum(sizes[d] for d in missing)
        inst.bytes_present = sum(sizes.values()) - missing_bytes
        need = missing_bytes + manifest.total_size
        have = self.home.free_bytes()
        if need > have:
            raise DiskFull(f"disk full: need {human_bytes(need)}, have {human_bytes(have)}")
        if missing:
            await self._fetch_all(inst, missing, sizes)
        await asyncio.to_thread(self._build, manifest)

    async def _fetch_all(
        self, inst: Install, missing: list[Digest], sizes: dict[Digest, int]
    ) -> None:
        batches: list[list[Digest]] = [[]]
        size = 0
        for d in missing:
            if batches[-1] and (size + sizes[d] > BATCH_BYTES or len(batches[-1]) >= BATCH_CHUNKS):
                batches.append([])
                size = 0
            batches[-1].append(d)
            size += sizes[d]
        queue: asyncio.Queue[list[Digest]] = asyncio.Queue()
        for b in batches:
            queue.put_nowait(b)

        async def worker() -> None:
            while not queue.empty():
                await self._fetch_batch(inst, queue.get_nowait(), sizes)

        workers = [
            asyncio.create_task(worker()) for _ in range(min(PARALLEL_BATCHES, len(batches)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    async def _fetch_batch(
        self, inst: Install, batch: list[Digest], sizes: dict[Digest, int]
    ) -> None:
        wanted = set(batch)
        pending: list[tuple[Digest, bytes]] = []
        pending_bytes = 0
        async for digest, data in self._fetch(batch):
            if digest not in wanted:
                raise RemoteError(f"site sent chunk {digest.short}… that was not asked for")
            if len(data) != sizes[digest]:
                raise HashMismatch(
                    f"hash mismatch in chunk {digest.short}…: {len(data)} bytes, expected {sizes[digest]}"
                )
            wanted.discard(digest)
            pending.append((digest, data))
            pending_bytes += len(data)
            inst.bytes_received += len(data)
            if pending_bytes >= WRITE_BATCH:
                await asyncio.to_thread(self._store_chunks, pending)
                pending, pending_bytes = [], 0
        if pending:
            await asyncio.to_thread(self._store_chunks, pending)
        if wanted:
            raise TransferError(f"site stream ended with {len(wanted)} chunk(s) missing")

    def _store_chunks(self, frames: list[tuple[Digest, bytes]]) -> None:
        """Verify each chunk against its digest, then keep it in the cache."""
        for digest, data in frames:
            digest.verify(data, "chunk")
            final = self.home.chunk_path(digest)
            tmp = final.with_name(f".{digest.hex}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, final)

    def _read_cached(self, digest: Digest) -> bytes:
        path = self.home.chunk_path(digest)
        data = path.read_bytes()
        try:
            digest.verify(data, "cached chunk")
        except HashMismatch:
            path.unlink(missing_ok=True)  # fetched again on the next attempt
            raise
        return data

    def _build(self, manifest: Manifest) -> None:
        staging = self.home.staging / f"{manifest.id.hex[:16]}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o755)
        try:
            for e in manifest.entries:
                path = staging / e.path
                if e.type is EntryType.DIR:
                    path.mkdir(mode=0o755)
                elif e.type is EntryType.SYMLINK:
                    os.symlink(e.target, path)
                else:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    with os.fdopen(fd, "wb") as f:
                        for c in e.chunks:
                            f.write(self._read_cached(c.digest))
                    os.chmod(path, 0o755 if e.executable else 0o644)
                    os.utime(path, ns=(e.mtime_ns, e.mtime_ns))
            syncfs(self.home.root)
            final = self.home.package_dir(manifest.name, manifest.version)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # an unrecorded or different tree: swap, never mix
                old = self.home.staging / f"old-{secrets.token_hex(4)}"
                os.rename(final, old)
                os.rename(staging, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staging, final)
            fsync_dir(final.parent)
            self.home.record_installed(manifest.ref, manifest.id.hex)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _os_error_words(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {Path(exc.filename or '').name or 'a file'}"
    return f"{exc.strerror or exc}: {exc.filename or ''}".strip(": ")
