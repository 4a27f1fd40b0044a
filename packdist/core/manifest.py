"""The manifest: a canonical, versioned description of one package version.

A manifest lists every entry of the tree (directories, regular files with their chunk lists,
symlinks that stay inside the tree). Its canonical form is UTF-8 JSON with sorted keys and no
white space; the BLAKE3 digest of that form is the package id, and the site signs it.

Parsing validates everything an agent relies on before it writes a byte: paths are relative,
normalised and never escape the package, every parent is a directory entry, symlinks resolve
inside the tree, file sizes equal the sum of their chunks.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from packdist.core.chunking import DEFAULT_PARAMS, ChunkerParams
from packdist.core.digest import Digest
from packdist.core.names import check_package_name, check_version
from packdist.core.signing import SigningKey, VerifyKey
from packdist.errors import IntegrityError, UserError

FORMAT = "packdist-manifest/1"


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

    @property
    def id(self) -> Digest:
        """The package id: the digest of the canonical form."""
        return Digest.of(self.canonical())

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    # --- derived facts --------------------------------------------------------------------

    def files(self) -> Iterator[Entry]:
        return (e for e in self.entries if e.type is EntryType.FILE)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.files())

    @property
    def file_count(self) -> int:
        return sum(1 for _ in self.files())

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
        try:
            m = cls._from_doc(doc)
        except (KeyError, TypeError, ValueError, UserError) as exc:
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
        previous = b""
        for raw in doc["entries"]:
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
