"""The staging tree of a fetch, beside DIR so that putting it in place is one rename on one
file system, and what fills it before anything is fetched.

Beside ``DIR`` (all hidden, all named for it):

* ``.DIR.packdist-staging/package`` — the id of the version being staged;
* ``.DIR.packdist-staging/tree/`` — the tree, every file preallocated at its size (a disk
  that cannot hold the version fails before any transfer);
* ``.DIR.packdist-manifest`` — the manifest of the version last put in DIR: where an
  older version's chunks are found for the next fetch;
* ``.DIR.packdist-lock`` — held while a fetch runs (a second one into DIR is refused).

A fetch that stopped (killed, a network gone) leaves the staging tree: the next fetch of
the same version keeps every chunk in it that still verifies and fetches only the rest.
Every chunk found here is verified against its digest on read, so a stale record or a file
changed in DIR since costs a fetch, never a wrong byte.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from packdist.core.digest import Digest
from packdist.core.fsutil import free_bytes, human_bytes, pread, pwrite_fd, remove_tree
from packdist.core.manifest import Manifest
from packdist.core.tree_shape import make_shape
from packdist.errors import DiskFull, IntegrityError, UserError

RESERVE = 16 * 1024 * 1024  # head room kept free beyond the package itself


@dataclass(frozen=True)
class Places:
    """Where a fetch into ``into`` keeps its things."""

    into: Path

    @classmethod
    def of(cls, into: Path) -> Places:
        into = Path(os.path.abspath(into))
        if not into.name or into.name in (".", ".."):
            raise UserError(f"--into {str(into)!r}: name a directory")
        if not into.parent.is_dir():
            raise UserError(f"--into {str(into)!r}: {into.parent} is not a directory")
        if os.path.lexists(into) and (into.is_symlink() or not into.is_dir()):
            raise UserError(f"--into {str(into)!r} exists and is not a directory: not replacing it")
        return cls(into)

    def _beside(self, suffix: str) -> Path:
        return self.into.parent / f".{self.into.name}.packdist-{suffix}"

    @property
    def staging(self) -> Path:
        return self._beside("staging")

    @property
    def tree(self) -> Path:
        return self.staging / "tree"

    @property
    def record(self) -> Path:
        return self._beside("manifest")

    @property
    def lock_path(self) -> Path:
        return self._beside("lock")

    @contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another fetch into {self.into} is running") from None
            yield
        finally:
            os.close(fd)

    def installed(self) -> Manifest | None:
        """The manifest of the version last put in DIR, if one was (and DIR is there)."""
        if not self.into.is_dir():
            return None
        try:
            return Manifest.parse(self.record.read_bytes())
        except (OSError, IntegrityError):
            return None


def lay_out(places: Places, manifest: Manifest) -> bool:
    """The staging tree of ``manifest``, every file preallocated; True if one was there
    already, of this very version (an interrupted fetch to resume). One of another version
    is dropped."""
    staging, tree, marker = places.staging, places.tree, places.staging / "package"
    try:
        # resumed only if it is ours as we left it: a real folder (not a link), of this
        # user, for no one else (DIR's parent may be shared: /tmp), naming this version
        st = os.lstat(staging)
        ours = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077
        if ours and marker.read_text() == manifest.id.hex and tree.is_dir():
            return True
    except OSError:
        pass
    remove_tree(staging)
    need = manifest.total_size + RESERVE
    have = free_bytes(places.into.parent)
    if need > have:
        raise DiskFull(f"disk full: need {human_bytes(need)}, have {human_bytes(have)}")
    staging.mkdir(mode=0o700)
    marker.write_text(manifest.id.hex)
    tmp = staging / f"layout-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o755)
    try:
        make_shape(tmp, manifest)
        os.rename(tmp, tree)
    except OSError as exc:
        remove_tree(staging)
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"disk full: need {human_bytes(need)}") from exc
        raise
    return False


@dataclass
class WritePlan:
    """Where each chunk of a manifest goes in the staging tree, and which are still missing
    (in the manifest's order); the descriptors chunks are written through."""

    manifest: Manifest
    tree: Path
    sizes: dict[Digest, int] = field(init=False)
    locations: dict[Digest, list[tuple[str, int]]] = field(init=False)
    missing: dict[Digest, None] = field(init=False)  # ordered
    _fds: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.sizes = self.manifest.chunk_sizes()
        self.locations = {}
        for path, offset, c in self.manifest.chunk_places():
            self.locations.setdefault(c.digest, []).append((path, offset))
        self.missing = dict.fromkeys(self.locations)

    def put(self, digest: Digest, data: bytes | memoryview) -> None:
        """Write a chunk, verified by the caller, at each of its places."""
        for path, offset in self.locations[digest]:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(self.tree / path, os.O_WRONLY)
            pwrite_fd(fd, offset, data)
        self.missing.pop(digest, None)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def fill_locally(plan: WritePlan, resumed: bool, older: tuple[Manifest, Path] | None) -> int:
    """Keep what a resumed staging tree holds that verifies, copy what the older version
    in DIR has; the bytes found here (each distinct chunk once)."""
    found = 0
    elsewhere: dict[Digest, list[tuple[Path, int]]] = {}
    if older is not None:
        old, root = older
        for path, offset, c in old.chunk_places():
            elsewhere.setdefault(c.digest, []).append((root / path, offset))
    for digest, locations in plan.locations.items():
        size = plan.sizes[digest]
        good: bytes | None = None
        absent: list[tuple[str, int]] = []
        for path, offset in locations:
            data = pread(plan.tree / path, offset, size) if resumed else None
            if digest.holds(data):
                good = data
            else:
                absent.append((path, offset))
        if good is not None and not absent:
            plan.missing.pop(digest, None)
            found += size
            continue
        for src, src_offset in elsewhere.get(digest, ()) if good is None else ():
            data = pread(src, src_offset, size)
            if digest.holds(data):
                good = data
                break
        if good is not None:
            plan.put(digest, good)  # writes it at every place, the absent ones included
            found += size
    return found
