"""Installs a signed manifest: fetch what is missing, verify, build, rename into place.

Steps, so that a server holds the whole version or none of it:

1. check the site's signature, then parse the manifest (which validates every path);
2. a version already installed with the same package id is done at once;
3. lay out ``staging/<package id>/`` (same file system as ``packages/``) with every file
   preallocated: a disk that cannot hold the version fails here, before any transfer,
   with "disk full: need N, have M", and nothing is left behind;
4. find each chunk locally if possible: already in the staging tree from an interrupted
   attempt (re-verified), or in an installed version that shares it (verified on read);
5. fetch the rest in streamed batches; every chunk is verified against its digest before
   it is written at its offsets;
6. set modes and times, create symlinks, ``syncfs``, then one ``rename`` into
   ``packages/NAME/VERSION``.

Bytes are written once, straight into the staging tree. The staging tree of an unfinished
install is kept across agent restarts, so chunks received before a crash are not fetched
again.
"""

from __future__ import annotations

import asyncio
import errno
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
RESERVE = 16 * 1024 * 1024  # head room kept free beyond the package itself
STAGING_TTL = 7 * 24 * 3600  # an unfinished staging tree untouched this long is dropped

#: streams the requested chunks as (digest, bytes) frames, not yet verified
FetchChunks = Callable[[list[Digest]], AsyncIterator[tuple[Digest, bytes]]]


class InstallState(StrEnum):
    INSTALLING = "installing"  # laying out, fetching or building
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
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, state: InstallState, error: str | None = None) -> None:
        self.state, self.error = state, error
        self.finished.set()

    async def wait(self, seconds: float) -> None:
        """Return when the install ends, or after ``seconds`` (for long polls)."""
        try:
            await asyncio.wait_for(self.finished.wait(), timeout=seconds)
        except TimeoutError:
            pass

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


Location = tuple[str, int]  # (relative path, offset)


class _Plan:
    """Where each chunk of a manifest goes, and which are still missing."""

    def __init__(self, manifest: Manifest) -> None:
        self.sizes = manifest.chunk_sizes()
        self.locations: dict[Digest, list[Location]] = {}
        for e in manifest.files():
            offset = 0
            for c in e.chunks:
                self.locations.setdefault(c.digest, []).append((e.path, offset))
                offset += c.size


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
        installed = self.home.installed().get(manifest.ref) == pid
        current = self.installs.get(pid)
        if current is not None and (
            current.state is InstallState.INSTALLING
            or (current.state is InstallState.INSTALLED and installed)
        ):
            return current
        inst = Install(pid, manifest.ref, manifest.total_size)
        self.installs[pid] = inst
        if installed:
            inst.bytes_present = manifest.total_size
            inst.end(InstallState.INSTALLED)
            return inst
        inst.task = asyncio.create_task(self._run(inst, manifest), name=f"install {pid[:12]}")
        return inst

    def status(self, package_id: str) -> Install | None:
        return self.installs.get(package_id)

    def recover(self) -> None:
        """Start-up recovery: drop staging trees of versions installed since, swaps and
        layouts left by a crash, and trees abandoned for a week; keep the others so their
        installs resume."""
        installed = set(self.home.installed().values())
        too_old = time.time() - STAGING_TTL
        for leftover in self.home.staging.iterdir():
            if (
                leftover.name.startswith("old-")
                or ".layout-" in leftover.name
                or leftover.name in installed
                or leftover.stat().st_mtime < too_old
            ):
                shutil.rmtree(leftover, ignore_errors=True)

    # --- the install ----------------------------------------------------------------------

    async def _run(self, inst: Install, manifest: Manifest) -> None:
        try:
            await self._install(inst, manifest)
            inst.end(InstallState.INSTALLED)
            log.info("installed %s (%s)", inst.ref, inst.package_id[:12])
        except PackdistError as exc:
            inst.end(InstallState.FAILED, exc.message)
            log.warning("install of %s failed: %s", inst.ref, exc.message)
        except OSError as exc:
            inst.end(InstallState.FAILED, _os_error_words(exc))
            log.warning("install of %s failed: %s", inst.ref, inst.error)
        except Exception as exc:  # a bug: say so, never hang
            inst.end(InstallState.FAILED, f"internal error in agent: {exc!r}")
            log.exception("install of %s failed", inst.ref)

    async def _install(self, inst: Install, manifest: Manifest) -> None:
        t0 = time.monotonic()
        plan = _Plan(manifest)
        staging = self.home.staging / manifest.id.hex
        resumed = await asyncio.to_thread(self._lay_out, manifest, staging)
        missing = await asyncio.to_thread(self._fill_locally, plan, staging, resumed)
        inst.bytes_present = manifest.total_size - sum(
            plan.sizes[d] * len(plan.locations[d]) for d in missing
        )
        t1 = time.monotonic()
        if missing:
            await self._fetch_all(inst, plan, staging, missing)
        t2 = time.monotonic()
        await asyncio.to_thread(self._finish, manifest, staging)
        log.info(
            "%s: prepared in %.2fs (%s local), fetched %s in %.2fs, finished in %.2fs",
            inst.ref,
            t1 - t0,
            human_bytes(inst.bytes_present),
            human_bytes(inst.bytes_received),
            t2 - t1,
            time.monotonic() - t2,
        )

    def _lay_out(self, manifest: Manifest, staging: Path) -> bool:
        """Create the staging tree with every file preallocated; True if it existed (an
        interrupted install to resume)."""
        if staging.exists():
            return True
        need = manifest.total_size + RESERVE
        have = self.home.free_bytes()
        if need > have:
            raise DiskFull(f"disk full: need {human_bytes(need)}, have {human_bytes(have)}")
        tmp = staging.with_name(f"{staging.name}.layout-{secrets.token_hex(4)}")
        tmp.mkdir(mode=0o755)
        try:
            for e in manifest.entries:
                path = tmp / e.path
                if e.type is EntryType.DIR:
                    path.mkdir(mode=0o755)
                elif e.type is EntryType.FILE:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    try:
                        if e.size:
                            os.posix_fallocate(fd, 0, e.size)
                    finally:
                        os.close(fd)
            os.rename(tmp, staging)
            return False
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno == errno.ENOSPC:
                have = self.home.free_bytes()
                raise DiskFull(
                    f"disk full: need {human_bytes(need)}, have {human_bytes(have)}"
                ) from exc
            raise

    def _fill_locally(self, plan: _Plan, staging: Path, resumed: bool) -> list[Digest]:
        """Verify what a resumed staging tree already holds, copy what an installed version
        has; return the digests that must be fetched."""
        local = self._installed_sources()
        missing: list[Digest] = []
        for digest, locations in plan.locations.items():
            size = plan.sizes[digest]
            good: bytes | None = None
            absent: list[Location] = []
            for path, offset in locations:
                data = _pread(staging / path, offset, size) if resumed else None
                if data is not None and Digest.of(data) == digest:
                    good = data
                else:
                    absent.append((path, offset))
            if not absent:
                continue
            if good is None and digest in local:
                src_path, src_offset = local[digest]
                data = _pread(src_path, src_offset, size)
                if data is not None and Digest.of(data) == digest:
                    good = data
            if good is None:
                missing.append(digest)
            else:
                for path, offset in absent:
                    _pwrite(staging / path, offset, good)
        return missing

    def _installed_sources(self) -> dict[Digest, Location]:
        """Chunks of installed versions: digest -> (absolute path, offset)."""
        out: dict[Digest, Location] = {}
        for ref, pid in self.home.installed().items():
            data = self.home.load_manifest(pid)
            if data is None:
                continue
            try:
                m = Manifest.parse(data)
            except PackdistError:
                continue
            root = self.home.package_dir(m.name, m.version)
            for e in m.files():
                offset = 0
                for c in e.chunks:
                    out.setdefault(c.digest, (str(root / e.path), offset))
                    offset += c.size
            del ref
        return out

    async def _fetch_all(
        self, inst: Install, plan: _Plan, staging: Path, missing: list[Digest]
    ) -> None:
        batches: list[list[Digest]] = [[]]
        size = 0
        for d in missing:
            if batches[-1] and (
                size + plan.sizes[d] > BATCH_BYTES or len(batches[-1]) >= BATCH_CHUNKS
            ):
                batches.append([])
                size = 0
            batches[-1].append(d)
            size += plan.sizes[d]
        queue: asyncio.Queue[list[Digest]] = asyncio.Queue()
        for b in batches:
            queue.put_nowait(b)

        async def worker() -> None:
            while not queue.empty():
                await self._fetch_batch(inst, plan, staging, queue.get_nowait())

        workers = [
            asyncio.create_task(worker()) for _ in range(min(PARALLEL_BATCHES, len(batches)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    async def _fetch_batch(
        self, inst: Install, plan: _Plan, staging: Path, batch: list[Digest]
    ) -> None:
        wanted = set(batch)
        pending: list[tuple[Digest, bytes]] = []
        pending_bytes = 0
        async for digest, data in self._fetch(batch):
            if digest not in wanted:
                raise RemoteError(f"site sent chunk {digest.short}… that was not asked for")
            wanted.discard(digest)
            pending.append((digest, data))
            pending_bytes += len(data)
            inst.bytes_received += len(data)
            if pending_bytes >= WRITE_BATCH:
                await asyncio.to_thread(self._write_chunks, plan, staging, pending)
                pending, pending_bytes = [], 0
        if pending:
            await asyncio.to_thread(self._write_chunks, plan, staging, pending)
        if wanted:
            raise TransferError(f"site stream ended with {len(wanted)} chunk(s) missing")

    def _write_chunks(self, plan: _Plan, staging: Path, frames: list[tuple[Digest, bytes]]) -> None:
        """Verify each chunk against its digest, then write it wherever the tree needs it."""
        for digest, data in frames:
            digest.verify(data, "chunk")
            if len(data) != plan.sizes[digest]:
                raise HashMismatch(f"hash mismatch in chunk {digest.short}…: wrong size")
            for path, offset in plan.locations[digest]:
                _pwrite(staging / path, offset, data)

    def _finish(self, manifest: Manifest, staging: Path) -> None:
        for e in manifest.entries:
            path = staging / e.path
            if e.type is EntryType.SYMLINK:
                if not path.is_symlink():
                    os.symlink(e.target, path)
            elif e.type is EntryType.FILE:
                os.chmod(path, 0o755 if e.executable else 0o644)
                os.utime(path, ns=(e.mtime_ns, e.mtime_ns))
        syncfs(self.home.root)
        final = self.home.package_dir(manifest.name, manifest.version)
        final.parent.mkdir(parents=True, exist_ok=True)
        self.home.save_manifest(manifest.id.hex, manifest.canonical())
        if final.exists():  # an unrecorded or different tree: swap, never mix
            old = self.home.staging / f"old-{secrets.token_hex(4)}"
            os.rename(final, old)
            os.rename(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, final)
        fsync_dir(final.parent)
        self.home.record_installed(manifest.ref, manifest.id.hex)


def _pread(path: Path | str, offset: int, size: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    return data if len(data) == size else None


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    finally:
        os.close(fd)


def _os_error_words(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {Path(exc.filename or '').name or 'a file'}"
    return f"{exc.strerror or exc}: {exc.filename or ''}".strip(": ")
