"""The local stages of an install: lay out the staging tree (every file preallocated, so
a disk that cannot hold the version fails before any transfer), then fill it with every
chunk found here: already in a resumed staging tree, or in an installed or cached version
that shares it; each verified against its digest on read. What is left is fetched.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from packdist.agent.home import AgentHome, delete_quietly
from packdist.agent.install_record import Install
from packdist.agent.write_plan import Location, WritePlan, pread, pwrite_fd
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest
from packdist.core.tree_shape import make_shape
from packdist.core.words import human_bytes
from packdist.errors import DiskFull

RESERVE = 16 * 1024 * 1024  # head room kept free beyond the package itself


def lay_out(
    home: AgentHome,
    trim_cache: Callable[[int], None],
    inst: Install,
    manifest: Manifest,
    staging: Path,
) -> bool:
    """Create the staging tree with every file preallocated; True if it existed (an
    interrupted install to resume). ``trim_cache(need)`` makes room in the chunk cache."""
    if staging.exists():
        return True
    if home.take_cached(manifest.id.hex, staging):  # removed earlier, still cached
        return True
    need = manifest.total_size + RESERVE
    have = home.free_bytes()
    if need > have:  # the chunk cache gives way first, if that makes the version fit
        trim_cache(need)
        have = home.free_bytes()
    if need > have:
        raise DiskFull(f"disk full: need {human_bytes(need)}, have {human_bytes(have)}")
    tmp = staging.with_name(f"{staging.name}.layout-{secrets.token_hex(4)}")
    tmp.mkdir(mode=0o755)
    try:
        make_shape(tmp, manifest, inst.tick)
        os.rename(tmp, staging)
        return False
    except OSError as exc:
        delete_quietly(tmp)
        if exc.errno == errno.ENOSPC:
            have = home.free_bytes()
            raise DiskFull(
                f"disk full: need {human_bytes(need)}, have {human_bytes(have)}"
            ) from exc
        raise


def fill_locally(
    home: AgentHome, inst: Install, plan: WritePlan, staging: Path, resumed: bool
) -> list[Digest]:
    """Verify what a resumed staging tree already holds, copy what an installed version
    has; return the digests that must be fetched."""
    with plan.writing():
        return _fill_locally_writing(home, inst, plan, staging, resumed)


def _fill_locally_writing(
    home: AgentHome, inst: Install, plan: WritePlan, staging: Path, resumed: bool
) -> list[Digest]:
    local = _installed_sources(home)
    used: set[str] = set()  # source files chunks were copied from
    missing: list[Digest] = []
    for digest, locations in plan.locations.items():
        inst.tick()
        size = plan.sizes[digest]
        good: bytes | None = None
        absent: list[Location] = []
        for path, offset in locations:
            data = pread(staging / path, offset, size) if resumed else None
            if digest.holds(data):
                good = data
            else:
                absent.append((path, offset))
        if not absent:
            continue
        for src_path, src_offset in local.get(digest, ()) if good is None else ():
            data = pread(src_path, src_offset, size)
            if digest.holds(data):
                good = data
                used.add(src_path)
                break
        if good is None:
            missing.append(digest)
        else:
            for path, offset in absent:
                pwrite_fd(plan.fd(staging / path), offset, good)
    cache = home.cache
    for tree in {
        cache / Path(p).relative_to(cache).parts[0] for p in used if Path(p).is_relative_to(cache)
    }:
        home.touch(tree)  # a cached version was useful: evicted last
    return missing


def _installed_sources(home: AgentHome) -> dict[Digest, list[Location]]:
    """Chunks of installed versions and of removed versions kept in the cache: digest ->
    [(absolute path, offset)], every place each is found (a repair takes a chunk from
    wherever it still verifies)."""
    out: dict[Digest, list[Location]] = {}
    for m, root in home.local_sources():
        for path, offset, c in m.chunk_places():
            out.setdefault(c.digest, []).append((str(root / path), offset))
    return out
