"""Deltas prepared when a version is imported, before any server asks for them.

A server that holds the previous version of a package will ask for each new chunk with the
previous version's chunks around it as bases (:mod:`packdist.core.bases`: the rule is read
from manifests alone, so the site can apply it too). Encoding each new chunk against those
bases once, at import, takes that cost off the path of every distribution: the first
server's install reads kept deltas (:mod:`packdist.site.delta_cache`) just as the
thousandth does. Bases an agent names that were not foreseen (it holds an older version)
are encoded at its request and kept then.

Preparing is best effort and bounded: at most :data:`PREPARE_BYTES` of new chunks (a
version that changes more than that gets the rest encoded on request), on every core, and
a failure leaves the import as it was (a kept delta is only an optimisation).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from packdist.core import codec
from packdist.core.bases import covering, files_of, joined_bases
from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest
from packdist.site.library import ContentLibrary
from packdist.store.core import Store

log = logging.getLogger("packdist.site")

#: new chunk bytes whose deltas an import prepares, at most (about 2 CPU-seconds of zstd)
PREPARE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Prepared:
    """What an import's delta preparation did."""

    against: str  # NAME@VERSION the deltas are against ("" if there was no earlier version)
    chunks: int  # new chunks with bases in the earlier version whose delta pays
    chunk_bytes: int  # their size
    delta_bytes: int  # the size of their deltas
    whole: int  # new chunks with bases that cross whole (no delta pays, or damaged bases)
    skipped: int  # new chunks with bases left for their first request (over the bound)
    seconds: float


def earlier_versions(store: Store, manifest: Manifest, most: int = 3) -> list[Manifest]:
    """The newest versions of the same package the site holds, newest first (a few: bases
    are looked for in each)."""
    found = [
        p for p in store.list_packages() if p.name == manifest.name and p.id != manifest.id.hex
    ]
    found.sort(key=lambda p: p.created_at, reverse=True)
    return [Manifest.parse(store.package_manifest(p.id)[0]) for p in found[:most]]


def planned_bases(
    manifest: Manifest, earlier: Manifest, new: set[Digest]
) -> dict[Digest, list[Digest]]:
    """For each chunk of ``new`` (at its first place in ``manifest``), the chunks of
    ``earlier`` an agent holding it will name as bases: those of the same file around the
    same range."""
    files = {path: ([start for start, _, _ in cs], cs) for path, cs in files_of(earlier).items()}
    out: dict[Digest, list[Digest]] = {}
    seen: set[Digest] = set()
    for path, offset, c in manifest.chunk_places():
        if c.digest not in new or c.digest in seen:
            continue
        seen.add(c.digest)  # an agent names bases for a chunk's first place only
        if path in files:
            found = [d for _, _, d in covering(*files[path], offset, c.size)]
            if found:
                out[c.digest] = found
    return out


def prepare_deltas(
    library: ContentLibrary, store: Store, manifest: Manifest, new: dict[Digest, int]
) -> Prepared:
    """Encode the ``new`` chunks of ``manifest`` (digest -> size: those its import wrote)
    against the newest earlier version of the same package, and keep the deltas."""
    earlier = earlier_versions(store, manifest, most=1)
    if not earlier:
        return Prepared("", 0, 0, 0, 0, 0, 0.0)
    return prepare_against(library, manifest, earlier[0], new)


def prepare_against(
    library: ContentLibrary, manifest: Manifest, earlier: Manifest, new: dict[Digest, int]
) -> Prepared:
    """Encode the ``new`` chunks of ``manifest`` against their bases in ``earlier``, and
    keep the deltas (a child site, once it holds a version its parent sent)."""
    started = time.monotonic()
    plan = planned_bases(manifest, earlier, set(new))
    chosen: list[tuple[Digest, list[Digest]]] = []
    total = 0
    for digest, bases in plan.items():
        if total + new[digest] > PREPARE_BYTES:
            break
        chosen.append((digest, bases))
        total += new[digest]
    deltas = library.deltas

    def encode(item: tuple[Digest, list[Digest]]) -> int:
        """The delta's size if it pays and is kept, else -1."""
        digest, bases = item
        # a base shared by neighbours is read again for each: from the page cache, next to
        # a millisecond of zstd, and memory stays flat whatever the version's size
        base = joined_bases(bases, library.intact)
        if base is None:
            return -1  # a damaged base, or too many bytes of them: left to the request
        data = library.intact(digest)
        if data is None:
            return -1  # never keep a damaged chunk's delta: `package verify` will say
        encoding, payload = codec.encode(data, codec.ALL, base)
        deltas.put(digest, bases, encoding, payload)
        return len(payload) if encoding == Encoding.ZSTD_BASE else -1

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        sizes = list(pool.map(encode, chosen))
    paid = [(d, n) for (d, _), n in zip(chosen, sizes, strict=True) if n >= 0]
    return Prepared(
        f"{earlier.name}@{earlier.version}",
        len(paid),
        sum(new[d] for d, _ in paid),
        sum(n for _, n in paid),
        len(chosen) - len(paid),
        len(plan) - len(chosen),
        time.monotonic() - started,
    )
