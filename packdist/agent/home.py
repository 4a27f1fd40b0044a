"""An agent's home: installed packages, the chunk cache, staging and enrollment facts.

::

    HOME/agent.json                  enrollment: site URL, server name, site public key
    HOME/packages/NAME/VERSION/      installed trees (exactly the source tree)
    HOME/state/installed.json        NAME@VERSION -> package id, for what is installed
    HOME/state/manifests/<id>        canonical manifests of installed versions (local chunk
                                     sources for later versions)
    HOME/staging/<id>/               a version being built (same file system as packages/);
                                     kept across restarts so an install resumes
    HOME/cache/<id>/                 a removed version's tree (its manifest stays in
                                     state/manifests/<id>): a local chunk source for later
                                     installs, and re-installed by a rename

The chunk cache is the staging trees of unfinished installs plus the removed versions in
``cache/``. It is bounded by ``cache_limit`` bytes (``agent.cache_limit``): when it holds
more, the entries used least recently go first (``cache/<id>`` and ``staging/<id>`` carry
their last use as the folder's mtime). The staging tree of an install that is running is
not cache: it is neither counted nor evicted. An install that would not fit on the disk
evicts entries first if that makes it fit.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packdist.core import fsutil
from packdist.core.fsutil import fsync_dir, human_bytes, remove_tree, tree_bytes, write_atomic
from packdist.core.manifest import Manifest
from packdist.errors import AlreadyExists, PackdistError, UserError

log = logging.getLogger("packdist.agent")

ENROLLMENT = "agent.json"
SITE_MARKER = "site.db"
SWAP_SUFFIX = ".swap"  # staging/<id>.swap: the journal of a rename or exchange into place
DEFAULT_CACHE_LIMIT = 2 * 1024**3  # bytes (agent.cache_limit)
TRASH_PREFIX = ".trash-"  # cache/.trash-*: a tree renamed away, being deleted


@dataclass(frozen=True)
class CacheEntry:
    """One tree of the chunk cache."""

    path: Path
    package_id: str
    kind: str  # "cached" (a removed version) or "staging" (an unfinished install)
    size: int  # bytes on disk (allocated blocks)
    last_used: float  # the folder's mtime


def is_package_id(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def delete_quietly(path: Path) -> None:
    """Delete a tree, a file or a symlink of any depth (:func:`fsutil.remove_tree`); what
    cannot be deleted is logged and left (a trash name is tried again at the next start)."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("could not delete %s: %s", path, exc.strerror or exc)


def _delete_tree(path: Path) -> None:
    """Rename a tree out of the way (one step), then delete it."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    delete_quietly(trash)


@dataclass
class AgentHome:
    root: Path
    cache_limit: int = DEFAULT_CACHE_LIMIT  # bytes the chunk cache may hold (see above)
    #: serialises read-modify-write of ``installed.json`` (installs finish in worker threads)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    #: serialises eviction (one pass at a time adds up sizes)
    _cache_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @property
    def packages(self) -> Path:
        return self.root / "packages"

    @property
    def manifests(self) -> Path:
        return self.root / "state" / "manifests"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def installed_file(self) -> Path:
        return self.root / "state" / "installed.json"

    def prepare(self) -> None:
        if (self.root / SITE_MARKER).exists():
            raise AlreadyExists(
                f"{self.root} is a site's home; a site and an agent never share one"
            )
        for d in (
            self.packages,
            self.staging,
            self.cache,
            self.installed_file.parent,
            self.manifests,
        ):
            d.mkdir(parents=True, exist_ok=True)
        for trash in self.cache.glob(f"{TRASH_PREFIX}*"):  # a deletion a crash interrupted
            delete_quietly(trash)

    def package_dir(self, name: str, version: str) -> Path:
        return self.packages / name / version

    def ref_dir(self, ref: str) -> Path:
        """The folder of ``NAME@VERSION`` (a ref this agent recorded itself)."""
        name, _, version = ref.partition("@")
        return self.package_dir(name, version)

    # --- enrollment -----------------------------------------------------------------------

    def load_enrollment(self) -> dict[str, Any] | None:
        """What ``agent.json`` says (None before the first enrollment).

        A file that cannot be read as enrollment facts is a :class:`UserError` naming it: the
        agent must not silently forget the site key it pinned.
        """
        path = self.root / ENROLLMENT
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(
                f"{path}: corrupt enrollment file ({exc}); remove it to enroll again"
            ) from exc
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) for k in ("site_url", "server", "site_public_key")
        ):
            raise UserError(
                f"{path}: corrupt enrollment file (site_url, server and site_public_key are "
                "required); remove it to enroll again"
            )
        return data

    def save_enrollment(self, data: dict[str, Any]) -> None:
        write_atomic(self.root / ENROLLMENT, json.dumps(data, indent=2).encode(), 0o600)

    # --- installed versions ---------------------------------------------------------------

    def installed(self) -> dict[str, str]:
        """NAME@VERSION -> package id, for versions whose tree is in place."""
        try:
            data: dict[str, str] = json.loads(self.installed_file.read_text())
        except FileNotFoundError:
            return {}
        return {ref: pid for ref, pid in data.items() if self.ref_dir(ref).is_dir()}

    def record_installed(self, ref: str, package_id: str) -> None:
        """Record ``ref`` as installed with ``package_id`` (safe from several threads)."""
        with self._lock:
            data = self.installed()
            data[ref] = package_id
            write_atomic(self.installed_file, json.dumps(data, indent=2, sort_keys=True).encode())

    def save_manifest(self, package_id: str, canonical: bytes) -> None:
        write_atomic(self.manifests / package_id, canonical)

    def load_manifest(self, package_id: str) -> bytes | None:
        try:
            return (self.manifests / package_id).read_bytes()
        except FileNotFoundError:
            return None

    def free_bytes(self) -> int:
        return fsutil.free_bytes(self.root)

    # --- local chunk sources --------------------------------------------------------------

    def manifest(self, package_id: str) -> Manifest | None:
        """The stored manifest of a version, parsed; None if missing or unreadable."""
        data = self.load_manifest(package_id)
        if data is None:
            return None
        try:
            return Manifest.parse(data)
        except PackdistError:
            return None

    def installed_trees(self) -> Iterator[tuple[Manifest, Path]]:
        """``(manifest, root)`` of every installed version with a readable manifest."""
        for ref, pid in self.installed().items():
            m = self.manifest(pid)
            if m is not None:
                yield m, self.ref_dir(ref)

    def local_sources(self) -> Iterator[tuple[Manifest, Path]]:
        """``(manifest, root)`` of every tree whose chunks an install may copy: installed
        versions (``packages/NAME/VERSION``), then removed ones kept in ``cache/<id>``.
        Trees without a readable manifest are left out."""
        yield from self.installed_trees()
        for e in self.cache_entries(kinds=("cached",)):
            m = self.manifest(e.package_id)
            if m is not None:
                yield m, e.path

    def touch(self, tree: Path) -> None:
        """Stamp a cache tree as used now (eviction takes the least recently used first)."""
        try:
            os.utime(tree)
        except FileNotFoundError:
            pass

    def take_cached(self, package_id: str, staging: Path) -> bool:
        """Move ``cache/<id>`` to ``staging`` (a re-install resumes from it: every chunk is
        re-verified); False if it is not cached."""
        try:
            os.rename(self.cache / package_id, staging)
        except (FileNotFoundError, OSError):
            return False
        self.touch(staging)
        log.info("re-installing %s from the cache", package_id[:12])
        return True

    # --- removal --------------------------------------------------------------------------

    def remove_version(self, ref: str, package_id: str | None = None) -> str:
        """Take ``ref`` (NAME@VERSION) out of ``packages/``, atomically: one rename moves the
        tree to ``cache/<id>`` (or out of the way, when its manifest is unknown), then
        ``installed.json`` forgets it. Returns ``removed``, or ``absent`` if the agent did not
        hold it. The caller then trims the cache (:meth:`trim_cache`: with a limit of 0 the
        tree is deleted at once) and never calls this while that version is being
        installed."""
        tree = self.ref_dir(ref)
        with self._lock:
            data = self._recorded()
            pid = data.get(ref) or package_id
            if not os.path.lexists(tree):
                if ref in data:
                    del data[ref]
                    self._write_installed(data)
                return "absent"
            known = pid is not None and self.load_manifest(pid) is not None
            if known:
                assert pid is not None
                kept = self.cache / pid
                if os.path.lexists(kept):  # an older copy of the same version
                    _delete_tree(kept)
                os.rename(tree, kept)
                self.touch(kept)  # last used: now
            else:
                kept = self.cache / f"{TRASH_PREFIX}{secrets.token_hex(8)}"
                os.rename(tree, kept)
            fsync_dir(tree.parent)
            data.pop(ref, None)
            self._write_installed(data)
            try:
                tree.parent.rmdir()  # packages/NAME, if that was its last version
            except OSError:
                pass
        if not known:
            delete_quietly(kept)
        log.info("removed %s (%s)", ref, "kept in the cache" if known else "deleted")
        return "removed"

    def _recorded(self) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads(self.installed_file.read_text())
        except FileNotFoundError:
            return {}
        return data

    def _write_installed(self, data: dict[str, str]) -> None:
        write_atomic(self.installed_file, json.dumps(data, indent=2, sort_keys=True).encode())

    # --- the chunk cache ------------------------------------------------------------------

    def cache_entries(self, kinds: tuple[str, ...] = ("cached", "staging")) -> list[CacheEntry]:
        """The trees of the cache, least recently used first (sizes only when asked for
        both kinds, as eviction does)."""
        places = {"cached": self.cache, "staging": self.staging}
        measure = len(kinds) > 1
        out = []
        for kind in kinds:
            try:
                children = list(places[kind].iterdir())
            except FileNotFoundError:
                continue
            for path in children:
                if not is_package_id(path.name):
                    continue  # journals, layouts, trash
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if not path.is_dir() or path.is_symlink():
                    continue
                size = tree_bytes(path) if measure else 0
                out.append(CacheEntry(path, path.name, kind, size, st.st_mtime))
        return sorted(out, key=lambda e: (e.last_used, e.path.name))

    def trim_cache(self, busy: frozenset[str] = frozenset(), need: int = 0) -> int:
        """Evict removed versions (``cache/``), least recently used first, until they hold
        at most ``cache_limit`` bytes; with ``need``, then evict more (removed versions
        first, then staging trees of unfinished installs, least recently used first) until
        the disk has ``need`` bytes free -- but only if evicting everything evictable would
        get there (otherwise nothing extra goes).

        The limit alone never evicts a staging tree: an unfinished install is work the site
        still wants done, and its next attempt resumes from it (abandoned ones go after
        ``STAGING_TTL``, see :meth:`Installer.recover`). Never a staging tree whose id is in
        ``busy`` (installs running) or that has a rename journal. Returns the bytes freed.
        """
        with self._cache_lock:
            entries = [
                e
                for e in self.cache_entries()
                if not (e.kind == "staging" and (e.package_id in busy or self._journalled(e)))
            ]
            freed = 0
            cached = [e for e in entries if e.kind == "cached"]
            over = sum(e.size for e in cached) - self.cache_limit
            evicted: set[Path] = set()
            for e in cached:
                if freed >= over:
                    break
                self._evict(e)
                evicted.add(e.path)
                freed += e.size
            rest = [e for e in entries if e.path not in evicted]
            rest.sort(key=lambda e: (e.kind != "cached", e.last_used, e.path.name))
            short = max(0, need - self.free_bytes()) if need else 0
            if short and short <= sum(e.size for e in rest):
                made = 0
                for e in rest:
                    if made >= short:
                        break
                    self._evict(e)
                    made += e.size
                freed += made
            if freed:
                log.info(
                    "cache: evicted %s (limit %s)",
                    human_bytes(freed),
                    human_bytes(self.cache_limit),
                )
            return freed

    def _journalled(self, e: CacheEntry) -> bool:
        return os.path.lexists(self.staging / f"{e.package_id}{SWAP_SUFFIX}")

    def _evict(self, e: CacheEntry) -> None:
        _delete_tree(e.path)
        if e.kind == "cached" and e.package_id not in set(self.installed().values()):
            (self.manifests / e.package_id).unlink(missing_ok=True)
        log.info("cache: evicted %s %s (%s)", e.kind, e.package_id[:12], human_bytes(e.size))
