"""The shape of a package's tree on disk, from its manifest, shared by the agent's install
and a client's fetch: every folder made and every file preallocated before a byte is
received (so a full disk is known at once), then, once the bytes are in, each file's mode
and time and each symlink."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from packdist.core.manifest import EntryType, Manifest


def _nothing() -> None:
    pass


def make_shape(root: Path, manifest: Manifest, tick: Callable[[], None] = _nothing) -> None:
    """In ``root`` (an empty folder): the manifest's folders, and its files at their sizes
    (``posix_fallocate``: ENOSPC now, not half way). ``tick`` after each entry."""
    for e in manifest.entries:
        path = root / e.path
        if e.type is EntryType.DIR:
            path.mkdir(mode=0o755)
        elif e.type is EntryType.FILE:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if e.size:
                    os.posix_fallocate(fd, 0, e.size)
            finally:
                os.close(fd)
        tick()


def finish_entries(root: Path, manifest: Manifest, tick: Callable[[], None] = _nothing) -> None:
    """Each file's mode (executable or not) and time, and each symlink, once every byte is
    in (a symlink already made by an interrupted attempt is kept)."""
    for e in manifest.entries:
        path = root / e.path
        if e.type is EntryType.SYMLINK:
            if not path.is_symlink():
                os.symlink(e.target, path)
        elif e.type is EntryType.FILE:
            os.chmod(path, 0o755 if e.executable else 0o644)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns))
        tick()
