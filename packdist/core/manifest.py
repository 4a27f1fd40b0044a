"""The manifest: a canonical, versioned description of one package version.

A manifest lists every entry of the tree (directories, regular files with their chunk lists,
symlinks that stay inside the tree). Its canonical form is UTF-8 JSON with sorted keys and no
white space; the BLAKE3 digest of that form is the package id, and the site signs it.

Parsing validates everything an agent relies on before it writes a byte: paths are relative,
normalised and never escape the package, every parent is a directory entry, symlinks resolve
inside the tree (followed through the package's own symlinks, as the kernel would), file sizes
equal the sum of their chunks.
"""

from __future__ import annotations

import functools
import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from packdist.core.chunking import DEFAULT_PARAMS, ChunkerParams
from packdist.core.digest import Digest
from packdist.core.names import check_package_name, check_version
from packdist.errors import IntegrityError, UserError

if TYPE_CHECKING:  # the keys are given: reading a manifest loads no cryptography
    from packdist.core.signing import SigningKey, VerifyKey

FORMAT = "packdist-manifest/1"
MAX_SYMLINK_HOPS = 40  # the kernel's limit (MAXSYMLINKS) on links followed in one lookup
#: the longest package path, in UTF-8 bytes: an agent puts it below its home
#: (``HOME/staging/<id>.layout-…/``), and the kernel refuses paths over 4,096 bytes (PATH_MAX)
MAX_PATH_BYTES = 3072


class EntryType(StrEnum):
    DIR = "dir"  # a directory (listed even when empty)
    FILE = "file"  # a regular file made of chunks
    SYMLINK = "symlink"  # a relative symlink that resolves inside the package


@dataclass(frozen=True, slots=True)
class ChunkRef:
    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    type: EntryType
    size: int = 0
    executable: bool = False
    mtime_ns: int = 0
    chunks: tuple[ChunkRef, ...] = ()
    target: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.type is EntryType.DIR:
            return {"path": self.path, "type": "dir"}
        if self.type is EntryType.SYMLINK:
            return {"path": self.path, "type": "symlink", "target": self.target}
        return {
            "path": self.path,
            "type": "file",
            "size": self.size,
            "executable": self.executable,
            "mtime_ns": self.mtime_ns,
            "chunks": [[c.digest.hex, c.size] for c in self.chunks],
        }


class ManifestError(IntegrityError):
    """The manifest is malformed."""


def check_relative_path(path: str) -> str:
    """A package path: relative, normalised, no ``..``, no empty or ``.`` components."""
    if not path or path.startswith("/") or "\0" in path:
        raise ManifestError(f"invalid path in manifest: {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ManifestError(
            f"path in manifest {path[:60]!r}… is longer than {MAX_PATH_BYTES} bytes"
        )
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"invalid path in manifest: {path!r}")
    return path


def symlink_stays_inside(link_path: str, target: str) -> bool:
    """True if a relative ``target`` of the link at ``link_path`` stays inside the package."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    return not (resolved == ".." or resolved.startswith("../") or resolved.startswith("/"))


class SymlinkEscape(ManifestError):
    """A symlink does not resolve inside the package."""


def resolve_symlink(link_path: str, links: Mapping[str, str]) -> str | None:
    """Resolve the symlink at ``link_path`` the way Linux would, inside the package.

    ``links`` maps the path of every symlink of the package to its target. The target is
    walked component by component from the link's directory; a component naming another
    link of the package is replaced by that link's target (relative to that link's
    directory), so ``d/e/y -> x/../../..`` is seen to climb from wherever ``d/e/x`` really
    points, not from ``d/e/x`` as text. Returns the package path the link ends at (``""`` for
    the package root; it may not exist: a dangling link inside the package is allowed), or
    None if the walk does not end within :data:`MAX_SYMLINK_HOPS` links (a loop, such as
    ``a -> a``): the kernel gives up on such a lookup too (``ELOOP``), so, having stayed
    inside for all the hops it would follow, the link cannot lead out.

    Raises :class:`SymlinkEscape`, its message a phrase to follow the link's name, if the
    walk meets an absolute target or climbs above the package root at any step. Checking
    every link this way guarantees a lookup that enters a link inside the installed tree
    stays inside while it follows it: it passes through the states of that link's own walk.
    """
    target = links[link_path]
    resolved: list[str] = link_path.split("/")[:-1]  # parents are real directories
    pending: list[str] = []
    hops = 1
    via = ""  # the last link followed, to name it in messages

    def push(text: str) -> None:
        if not text or text.startswith("/") or "\0" in text:
            where = f" (through symlink {via!r})" if via else ""
            raise SymlinkEscape(f"has an absolute or empty target{where}")
        pending[:0] = text.split("/")

    push(target)
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                where = f" through symlink {via!r}" if via else ""
                raise SymlinkEscape(f"escapes the package{where}")
            resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        if candidate in links:
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None  # ELOOP for the kernel: inside for every hop it would follow
            via = candidate
            push(links[candidate])
        else:
            resolved.append(part)
    return "/".join(resolved)


def check_symlinks(links: Mapping[str, str]) -> None:
    """Refuse the first symlink (in path order) that leads out of the package.

    Raises :class:`SymlinkEscape` naming the link and its target.
    """
    for path in sorted(links, key=str.encode):
        try:
            resolve_symlink(path, links)
        except SymlinkEscape as exc:
            raise SymlinkEscape(f"symlink {path!r} -> {links[path]!r} {exc.message}") from None


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    entries: tuple[Entry, ...]
    chunker: ChunkerParams = DEFAULT_PARAMS
    _canonical: bytes = field(default=b"", compare=False, repr=False)

    @classmethod
    def build(
        cls, name: str, version: str, entries: list[Entry], chunker: ChunkerParams
    ) -> Manifest:
        """Build and validate a manifest from entries in any order."""
        ordered = tuple(sorted(entries, key=lambda e: e.path.encode()))
        m = cls(check_package_name(name), check_version(version), ordered, chunker)
        return cls.parse(m.canonical())  # one validation path for built and received ones

    # --- canonical form -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "chunker": self.chunker.to_json(),
            "entries": [e.to_json() for e in self.entries],
        }

    def canonical(self) -> bytes:
        if self._canonical:
            return self._canonical
        return json.dumps(
            self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    @functools.cached_property
    def id(self) -> Digest:
        """The package id: the digest of the canonical form."""
        return Digest.of(self.canonical())

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    # --- derived facts --------------------------------------------------------------------

    def files(self) -> Iterator[Entry]:
        return (e for e in self.entries if e.type is EntryType.FILE)

    @functools.cached_property
    def total_size(self) -> int:
        return sum(e.size for e in self.files())

    @property
    def file_count(self) -> int:
        return sum(1 for _ in self.files())

    def chunk_places(self) -> Iterator[tuple[str, int, ChunkRef]]:
        """Every chunk of every file, in order: ``(file path, offset in the file, chunk)``."""
        for e in self.files():
            offset = 0
            for c in e.chunks:
                yield e.path, offset, c
                offset += c.size

    def chunk_sizes(self) -> dict[Digest, int]:
        """Every distinct chunk of the package with its size."""
        out: dict[Digest, int] = {}
        for e in self.files():
            for c in e.chunks:
                out[c.digest] = c.size
        return out

    def same_content(self, other: Manifest) -> bool:
        """Equal but for modification times (a re-import of the same tree)."""

        def strip(m: Manifest) -> list[dict[str, Any]]:
            return [{k: v for k, v in e.to_json().items() if k != "mtime_ns"} for e in m.entries]

        return (self.name, self.version) == (other.name, other.version) and strip(self) == strip(
            other
        )

    # --- parsing --------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Parse and validate the canonical form; anything else is refused."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
        except RecursionError:  # nesting no manifest has: Python's decoder gives up
            raise ManifestError("manifest is not valid JSON: nested too deeply") from None
        try:
            m = cls._from_doc(doc)
        # OverflowError: a size or time written 1e999, an infinite float, as an int
        except (KeyError, TypeError, ValueError, OverflowError, UserError) as exc:
            raise ManifestError(f"malformed manifest: {exc}") from exc
        if m.canonical() != data:
            raise ManifestError("manifest is not in canonical form")
        object.__setattr__(m, "_canonical", data)
        return m

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> Manifest:
        if not isinstance(doc, dict):
            raise ValueError("manifest is not a JSON object")
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown manifest format {doc.get('format')!r}")
        entries: list[Entry] = []
        seen_dirs: set[str] = set()
        links: dict[str, str] = {}
        previous = b""
        if not isinstance(doc["entries"], list):
            raise ValueError("entries is not a list")
        for raw in doc["entries"]:
            if not isinstance(raw, dict):
                raise ValueError("an entry is not a JSON object")
            path = check_relative_path(str(raw["path"]))
            key = path.encode()
            if key <= previous:
                raise ValueError(f"entries not sorted or duplicated at {path!r}")
            previous = key
            parent = posixpath.dirname(path)
            if parent and parent not in seen_dirs:
                raise ValueError(f"parent of {path!r} is not a directory entry")
            kind = EntryType(raw["type"])
            if kind is EntryType.DIR:
                entries.append(Entry(path, kind))
                seen_dirs.add(path)
            elif kind is EntryType.SYMLINK:
                target = str(raw["target"])
                if not symlink_stays_inside(path, target):
                    raise ValueError(f"symlink {path!r} -> {target!r} leaves the package")
                entries.append(Entry(path, kind, target=target))
                links[path] = target
            else:
                chunks = tuple(ChunkRef(Digest.parse(d), int(s)) for d, s in raw["chunks"])
                size = int(raw["size"])
                if size < 0 or any(c.size <= 0 for c in chunks):
                    raise ValueError(f"negative or empty sizes in {path!r}")
                if sum(c.size for c in chunks) != size:
                    raise ValueError(f"chunks of {path!r} do not add up to its size")
                entries.append(
                    Entry(
                        path,
                        kind,
                        size=size,
                        executable=bool(raw["executable"]),
                        mtime_ns=int(raw["mtime_ns"]),
                        chunks=chunks,
                    )
                )
        # Second pass, once every link is known: follow each through the others.
        check_symlinks(links)
        return cls(
            check_package_name(str(doc["name"])),
            check_version(str(doc["version"])),
            tuple(entries),
            ChunkerParams.from_json(doc["chunker"]),
        )


@dataclass(frozen=True)
class SignedManifest:
    """A manifest's canonical bytes with the site's signature over them."""

    manifest: Manifest
    signature: bytes

    @classmethod
    def sign(cls, manifest: Manifest, key: SigningKey) -> SignedManifest:
        return cls(manifest, key.sign(manifest.canonical()))

    @classmethod
    def verify(cls, data: bytes, signature: bytes, key: VerifyKey) -> SignedManifest:
        """Check the signature first, then parse: nothing unsigned is even parsed."""
        key.verify(signature, data)
        return cls(Manifest.parse(data), signature)
