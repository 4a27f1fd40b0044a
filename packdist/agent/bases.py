"""Base chunks: what an agent already holds that a missing chunk probably resembles.

A chunk that must be fetched is usually an edited copy of a chunk of an earlier version: the
same file, at about the same offset. The agent names such chunks as *bases* when it asks
for the chunk; the site then sends the chunk zstd-compressed against them (see
:mod:`packdist.core.codec`), often a few KiB instead of 128.

For a missing chunk at ``(path, offset)`` of the new version, the bases are the chunks of an
installed version's file ``path`` whose byte ranges cover the new chunk's range (an edit
that removes a cut point merges two old chunks into one new), and the chunk after them (an
insertion earlier in the file shifts the content a little). Installed versions of the
same package name are searched first, then any installed package with that path, then
(for a renamed file) the installed file that shares the most chunks with it.

Every base offered is read and verified against its digest first, so the agent never asks
for an encoding it cannot decode; it is read and verified again when a chunk is decoded
(:func:`read_base`), and a base that changed in between makes the chunk fail with a clear
error and the install retry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from packdist.agent.home import AgentHome
from packdist.core.bases import covering, files_of
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest


@dataclass(frozen=True)
class BaseChunk:
    """A chunk of an installed version: where to read it, and what it must hash to."""

    digest: Digest
    path: str  # absolute path of the installed file
    offset: int
    size: int


class _File:
    """The chunks of one installed file, by offset."""

    def __init__(self, path: str, chunks: list[tuple[int, int, Digest]]) -> None:
        self.path = path
        self.starts = [offset for offset, _, _ in chunks]
        self.chunks = chunks

    def around(self, offset: int, size: int) -> list[BaseChunk]:
        """The bases of a chunk at ``offset`` of ``size`` bytes in this file (the rule is
        :func:`packdist.core.bases.covering`)."""
        return [
            BaseChunk(digest, self.path, start, length)
            for start, length, digest in covering(self.starts, self.chunks, offset, size)
        ]


def _installed_files(home: AgentHome, name: str) -> list[dict[str, _File]]:
    """Per installed version, its files by relative path: versions of ``name`` first, the
    one put in place last first (most likely the version before the new one: the one the
    site prepared deltas against, :mod:`packdist.site.delta_prepare`)."""
    same: list[tuple[float, dict[str, _File]]] = []
    other: list[dict[str, _File]] = []
    for m, root in home.installed_trees():
        files = {path: _File(os.fspath(root / path), cs) for path, cs in files_of(m).items()}
        if m.name != name:
            other.append(files)
            continue
        try:
            placed = os.stat(root).st_mtime
        except OSError:
            continue
        same.append((placed, files))
    same.sort(key=lambda pair: pair[0], reverse=True)
    return [files for _, files in same] + other


def _renamed(manifest: Manifest, versions: list[dict[str, _File]]) -> dict[str, _File]:
    """For each file of ``manifest`` that no installed version has at its path, the installed
    file that shares the most chunks with it, if any (a renamed or moved file)."""
    known = {path for files in versions for path in files}
    owners: dict[Digest, _File] = {}
    for files in reversed(versions):  # the preferred versions win
        for f in files.values():
            for _, _, digest in f.chunks:
                owners[digest] = f
    out: dict[str, _File] = {}
    for e in manifest.files():
        if e.path in known:
            continue
        votes: dict[str, int] = {}
        by_path: dict[str, _File] = {}
        for c in e.chunks:
            owner = owners.get(c.digest)
            if owner is not None:
                votes[owner.path] = votes.get(owner.path, 0) + 1
                by_path[owner.path] = owner
        if votes:
            out[e.path] = by_path[max(votes, key=lambda p: votes[p])]
    return out


def choose_bases(
    home: AgentHome,
    manifest: Manifest,
    wanted: Mapping[Digest, tuple[str, int, int]],
    tick: Callable[[], None] = lambda: None,
) -> dict[Digest, list[BaseChunk]]:
    """Bases for chunks of ``manifest`` to fetch (digest -> its ``(path, offset, size)``):
    only those read back intact now. Chunks without a candidate are left out. ``tick`` is
    called for each chunk looked at (progress: reading bases of a big update takes time).

    A file no installed version has at its path is matched with the installed file that
    shares the most chunks with it (a renamed file whose content also changed)."""
    versions = _installed_files(home, manifest.name)
    if not versions:
        return {}
    versions.append(_renamed(manifest, versions))
    verified: dict[BaseChunk, bool] = {}
    out: dict[Digest, list[BaseChunk]] = {}
    for digest, (path, offset, size) in wanted.items():
        tick()
        for files in versions:
            f = files.get(path)
            if f is None:
                continue
            candidates = f.around(offset, size)
            for b in candidates:
                if b not in verified:
                    verified[b] = read_base([b]) is not None
            good = [b for b in candidates if verified[b]]
            if good:
                out[digest] = good
                break
    return out


def read_base(bases: Iterable[BaseChunk]) -> bytes | None:
    """The bytes of ``bases`` concatenated, each verified; None if any cannot be read intact."""
    parts: list[bytes] = []
    for b in bases:
        try:
            fd = os.open(b.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.pread(fd, b.size, b.offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) != b.size or not b.digest.holds(data):
            return None
        parts.append(data)
    return b"".join(parts)
