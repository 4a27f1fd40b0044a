"""Walks a source tree and refuses anything packdist cannot reproduce faithfully.

The walk only reads metadata; it runs to the end before a single chunk is written, so a
refused tree leaves the library and the database untouched. Symlinks are checked twice: each
target as text while walking, then, once every link is known, each followed through the
tree's other links the way the kernel would (``d/e/x -> ../..`` is harmless, but then
``d/e/y -> x/../../..`` climbs out of the tree from where ``x`` points).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from packdist.core.manifest import (
    MAX_PATH_BYTES,
    EntryType,
    SymlinkEscape,
    resolve_symlink,
    symlink_stays_inside,
)
from packdist.errors import TreeRefused


@dataclass(frozen=True, slots=True)
class SourceEntry:
    path: str  # relative, '/'-separated, valid UTF-8
    type: EntryType
    abspath: Path
    size: int = 0
    executable: bool = False
    mtime_ns: int = 0
    target: str = ""


def _display(path: Path) -> str:
    """The path for messages; bytes that are not UTF-8 are shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _short(path: Path) -> str:
    """A path for a one-line message: its start and its end, if it is long."""
    text = _display(path)
    return text if len(text) <= 120 else f"{text[:60]}…{text[-50:]}"


def walk(root: Path) -> list[SourceEntry]:
    """Return every entry below ``root`` (not ``root`` itself), parents before children."""
    try:
        st = root.lstat()
    except FileNotFoundError:
        raise TreeRefused(f"{_display(root)}: no such directory") from None
    if not stat.S_ISDIR(st.st_mode):
        raise TreeRefused(f"{_display(root)}: not a directory")
    entries: list[SourceEntry] = []
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            children = sorted(os.scandir(folder), key=lambda d: d.name)
        except PermissionError as exc:
            raise TreeRefused(
                f"{_display(folder)}: cannot read directory ({exc.strerror})"
            ) from None
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            raise TreeRefused(
                f"{_short(folder)}: path too long to read ({len(os.fsencode(folder))} bytes)"
            ) from None
        for child in children:
            abspath = Path(child.path)
            try:
                child.name.encode("utf-8")
            except UnicodeEncodeError:
                raise TreeRefused(f"{_display(abspath)}: file name is not valid UTF-8") from None
            rel = f"{prefix}{child.name}"
            if len(rel.encode()) > MAX_PATH_BYTES:
                raise TreeRefused(
                    f"{_short(abspath)}: path inside the package is {len(rel.encode())} bytes "
                    f"long; packdist allows at most {MAX_PATH_BYTES}"
                )
            st = child.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                entries.append(SourceEntry(rel, EntryType.DIR, abspath))
                stack.append((abspath, rel + "/"))
            elif stat.S_ISREG(mode):
                if not os.access(abspath, os.R_OK):
                    raise TreeRefused(f"{_display(abspath)}: file is not readable")
                entries.append(
                    SourceEntry(
                        rel,
                        EntryType.FILE,
                        abspath,
                        size=st.st_size,
                        executable=bool(mode & stat.S_IXUSR),
                        mtime_ns=st.st_mtime_ns,
                    )
                )
            elif stat.S_ISLNK(mode):
                target = os.readlink(abspath)
                try:
                    target.encode("utf-8")
                except UnicodeEncodeError:
                    raise TreeRefused(
                        f"{_display(abspath)}: symlink target is not valid UTF-8"
                    ) from None
                if target.startswith("/"):
                    raise TreeRefused(
                        f"{_display(abspath)}: symlink to absolute path {target!r} is not allowed"
                    )
                if not symlink_stays_inside(rel, target):
                    raise TreeRefused(
                        f"{_display(abspath)}: symlink target {target!r} escapes the package"
                    )
                entries.append(SourceEntry(rel, EntryType.SYMLINK, abspath, target=target))
            else:
                kind = (
                    "device file"
                    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
                    else "socket"
                    if stat.S_ISSOCK(mode)
                    else "FIFO"
                    if stat.S_ISFIFO(mode)
                    else "special file"
                )
                raise TreeRefused(f"{_display(abspath)}: {kind} cannot be packaged")
    if not entries:
        raise TreeRefused(f"{_display(root)}: directory is empty")
    _check_links(entries)
    return entries


def _check_links(entries: list[SourceEntry]) -> None:
    """Refuse the first symlink (in path order) that leaves the tree through other links."""
    links = {e.path: e for e in entries if e.type is EntryType.SYMLINK}
    targets = {path: e.target for path, e in links.items()}
    for path in sorted(links, key=str.encode):
        try:
            resolve_symlink(path, targets)
        except SymlinkEscape as exc:
            link = links[path]
            raise TreeRefused(
                f"{_display(link.abspath)}: symlink target {link.target!r} {exc.message}"
            ) from None
