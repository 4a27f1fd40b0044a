"""What the despooler puts in an install request besides the instruction itself: the
package's signed manifest (read once per package and kept) and the peers to fetch from,
with their credential (from the package's swarm, read once per package every few
seconds). Nothing here costs work proportional to the fleet per install. And, when an
install fails on a chunk, whose copy was damaged (:func:`chunk_fault`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from packdist.core.digest import Digest
from packdist.core.signing import SigningKey
from packdist.errors import ErrorKind, IntegrityError, PackdistError, RemoteError
from packdist.site.library import ContentLibrary
from packdist.site.store_runner import StoreRunner
from packdist.site.tracker import Swarm, SwarmIndex
from packdist.store.base import Claim

MANIFESTS_KEPT = 8  # signed manifests held in memory (immutable, read once per package)


class InstallInputs:
    def __init__(
        self,
        db: StoreRunner,
        key: SigningKey,
        location_label: str,
        silent_after: Callable[[], float],
        heard: Callable[[str], float | None],
    ) -> None:
        self.db = db
        self.key = key
        self.silent_after = silent_after
        self.swarms = SwarmIndex(location_label, heard=heard)
        self._swarm_reads: dict[str, asyncio.Future[Swarm]] = {}  # one read per package
        self._manifests: dict[str, tuple[bytes, bytes]] = {}

    async def peers(self, c: Claim) -> tuple[str, list[dict[str, Any]]]:
        """The peers ``c``'s server may fetch the package from (the tracker's choice) and
        the credential for them."""
        now = time.time()
        swarm = self.swarms.fresh(c.package_id, c.server, now)
        if swarm is None:
            swarm = await self._read_swarm(c.package_id)
        return swarm.offer_json(c.server, c.package_id, self.key, now)

    def installed(self, package_id: str, server: str) -> None:
        """``server`` holds the package now: a holder for the installs that follow."""
        self.swarms.installed(package_id, server)

    async def _read_swarm(self, package_id: str) -> Swarm:
        """The package's swarm read again: one read, however many installs wait for it."""
        reading = self._swarm_reads.get(package_id)
        if reading is None:

            async def read() -> Swarm:
                try:
                    now = time.time()
                    members = await self.db(lambda s: s.swarm(package_id, now))
                    return self.swarms.load(package_id, members, now, self.silent_after())
                finally:
                    del self._swarm_reads[package_id]

            reading = self._swarm_reads[package_id] = asyncio.ensure_future(read())
        return await asyncio.shield(reading)

    async def manifest(self, package_id: str) -> tuple[bytes, bytes]:
        """The package's signed manifest (a package never changes: read once, kept a while)."""
        found = self._manifests.pop(package_id, None)  # (taken out: put back as the newest)
        if found is None:
            found = await self.db(lambda s: s.package_manifest(package_id))
            if len(self._manifests) >= MANIFESTS_KEPT:  # the least recently used goes
                self._manifests.pop(next(iter(self._manifests)))
        self._manifests[package_id] = found
        return found


async def chunk_fault(
    library: ContentLibrary | None, c: Claim, chunk: str, error: str
) -> PackdistError:
    """A chunk from the site failed to verify on the agent. If the library's own copy
    is damaged, retrying cannot help: the instruction stops, saying what to do. If the
    copy is intact, it was damaged on the way, and the attempt is retried."""
    if library is None:
        return RemoteError(error, kind=ErrorKind.INTEGRITY)
    try:
        digest = Digest.parse(chunk)
    except PackdistError:
        return RemoteError(error, kind=ErrorKind.INTEGRITY)

    def intact() -> bool:
        try:
            digest.verify(library.read(digest))
        except PackdistError:
            return False
        return True

    if await asyncio.to_thread(intact):
        return RemoteError(
            f"{error}; the library's copy is intact, so it was damaged on the way",
            kind=ErrorKind.TRANSIENT,
        )
    return IntegrityError(
        f"chunk {digest.short}… is corrupt in the library: run `packdist package verify"
        f" {c.package_ref}`, mend it, then `packdist job retry {c.job_id}`"
    )
