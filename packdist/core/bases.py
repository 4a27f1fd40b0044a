"""Which chunks of an earlier version a new chunk probably resembles: its *bases*, named
when the chunk is asked for so that it crosses the link as a zstd delta against them
(:mod:`packdist.core.codec`). Read from manifests alone, so that an agent (its installed
versions, :mod:`packdist.agent.bases`) and a child site (the versions in its library,
:mod:`packdist.site.package_pull`) choose them by one rule.

For a chunk at ``(path, offset, size)`` of the new version: the chunks of an earlier
version's file ``path`` whose ranges cover the new chunk's (an edit that removes a cut
point merges old chunks into one new), and the one after them (an insertion earlier in
the file shifts content), within :data:`codec.MAX_BASES` chunks and
:data:`codec.MAX_BASE_BYTES` bytes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from packdist.core import codec
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest

Placed = tuple[int, int, Digest]  # (offset in the file, size, digest)


def covering(
    starts: Sequence[int], chunks: Sequence[Placed], offset: int, size: int
) -> list[Placed]:
    """Of a file's ``chunks`` (in order; ``starts`` their offsets), those covering
    ``offset .. offset + size`` and the next one, within the bounds of a delta's bases."""
    i = max(0, bisect.bisect_right(starts, offset) - 1)
    j = bisect.bisect_left(starts, offset + size) + 1
    out: list[Placed] = []
    total = 0
    for start, length, digest in chunks[i : min(j, i + codec.MAX_BASES)]:
        if total + length > codec.MAX_BASE_BYTES:
            break
        out.append((start, length, digest))
        total += length
    return out


def files_of(manifest: Manifest) -> dict[str, list[Placed]]:
    """Each file of ``manifest`` with its chunks, in order."""
    files: dict[str, list[Placed]] = {}
    for path, offset, c in manifest.chunk_places():
        files.setdefault(path, []).append((offset, c.size, c.digest))
    return files


def joined_bases(digests: Sequence[Digest], read: Callable[[Digest], bytes | None]) -> bytes | None:
    """The bytes of a delta's bases ``digests``, each as ``read`` gives it verified, in the
    order named; None if one cannot be read intact, or all of them together exceed
    :data:`codec.MAX_BASE_BYTES`."""
    parts = []
    for d in digests:
        data = read(d)
        if data is None:
            return None
        parts.append(data)
    joined = b"".join(parts)
    return joined if len(joined) <= codec.MAX_BASE_BYTES else None
