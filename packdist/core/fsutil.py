"""Small file-system helpers: durable writes, atomic exchange, syncfs, free space, and walks
and deletions of trees of any depth.

A tree is walked with one directory descriptor open at a time, by name relative to it: no
recursion (a tree 1,200 directories deep, which the site accepts, would exhaust Python's
stack in ``os.walk`` or ``shutil.rmtree`` on 3.11), no file descriptor per level (the limit
is often 1,024) and no path longer than one name (so ``PATH_MAX`` never bites).
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from packdist.core.words import human_bytes as human_bytes  # its home is core/words.py now


def _load_libc() -> ctypes.CDLL:
    """The C library by its usual name first: ``find_library`` runs ``ldconfig`` (about
    0.1 s at every start of every command), so it is asked only where that name fails."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library  # (it loads subprocess: only where needed)

        return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)


_libc = _load_libc()

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Atomically swap the names ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``).

    Both must exist, on the same file system. At every instant each name holds one of the
    two trees, whole: there is no moment (nor crash) where either name is missing. Raises
    :class:`OSError` with the kernel's errno (``ENOENT``, ``EXDEV``, ``EINVAL`` where the
    file system cannot exchange, ...).
    """
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:  # a C library older than glibc 2.28
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library", str(a))
    rc = renameat2(
        ctypes.c_int(AT_FDCWD),
        os.fsencode(a),
        ctypes.c_int(AT_FDCWD),
        os.fsencode(b),
        ctypes.c_uint(RENAME_EXCHANGE),
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def syncfs(path: Path) -> None:
    """Flush every dirty page of the file system holding ``path`` (Linux ``syncfs``).

    One call makes a whole batch of written files durable, far cheaper than an fsync each.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting for them.

    A hint that spreads disk work over a long write, so that the ``syncfs`` that makes it
    durable has little left to do.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary name, fsync'd, then renamed.

    The temporary name is unique to this call (process, thread and a random part), so
    concurrent writers of the same file, in threads or processes, never share one: each
    rename installs one complete version.
    """
    unique = f"{os.getpid()}-{threading.get_native_id()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.name}.tmp-{unique}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# --- trees of any depth ----------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Level:
    """One directory on the way down: who it is, and the subdirectories still to visit."""

    dev: int
    ino: int
    name: str  # in its parent
    rel: str  # from the root, '/'-separated ("" for the root)
    subdirs: list[str] = field(default_factory=list)  # popped from the end
    scanned: bool = False


def _scan(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as it:
        return list(it)


def walk_tree(
    root: Path | str, leave: Callable[[int, str], None] | None = None
) -> Iterator[tuple[int, str, list[os.DirEntry[str]]]]:
    """``(dir_fd, rel, entries)`` for every directory of the tree at ``root``, parents first.

    ``rel`` is the directory's path from ``root`` (``""`` for ``root``); ``entries`` its
    entries (``DirEntry``, relative to ``dir_fd``: use ``dir_fd=`` or ``entry.stat()``, valid
    until the next step). A directory the caller removes from ``entries`` is not walked into
    (as with ``os.walk``'s ``dirnames``). Symlinks are never followed. After a subdirectory and everything
    in it has been walked, ``leave(parent_fd, name)`` is called (to delete it, say).

    The walk holds one descriptor and climbs back through ``..``, checking it lands on the
    directory it came from: a tree moved while being walked raises :class:`OSError` rather
    than walking somewhere else. Raises :class:`OSError` if ``root`` is not a directory.
    """
    fd = os.open(root, _DIR_FLAGS)
    try:
        st = os.fstat(fd)
        stack = [_Level(st.st_dev, st.st_ino, "", "")]
        while stack:
            top = stack[-1]
            if not top.scanned:
                entries = _scan(fd)
                yield fd, top.rel, entries
                top.subdirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
                top.subdirs.reverse()  # visited in the order listed
                top.scanned = True
            if top.subdirs:
                name = top.subdirs.pop()
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue  # gone meanwhile
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                        continue  # no longer a directory: nothing below it to walk
                    raise
                os.close(fd)
                fd = child
                st = os.fstat(fd)
                rel = f"{top.rel}/{name}" if top.rel else name
                stack.append(_Level(st.st_dev, st.st_ino, name, rel))
                continue
            stack.pop()
            if not stack:
                return
            up = os.open("..", _DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = up
            st = os.fstat(fd)
            parent = stack[-1]
            if (st.st_dev, st.st_ino) != (parent.dev, parent.ino):
                raise OSError(errno.ESTALE, "tree moved while being walked", str(root))
            if leave is not None:
                leave(fd, top.name)
    finally:
        os.close(fd)


def remove_tree(path: Path | str, missing_ok: bool = True) -> None:
    """Delete ``path``: a tree of any depth or width (see :func:`walk_tree`), a file, or a
    symlink (never followed). Raises :class:`OSError` if something cannot be deleted."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return

    def rmdir(parent_fd: int, name: str) -> None:
        os.rmdir(name, dir_fd=parent_fd)

    for fd, _rel, entries in walk_tree(path, leave=rmdir):
        for e in entries:
            if not e.is_dir(follow_symlinks=False):
                try:
                    os.unlink(e.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
    os.rmdir(path)


def tree_bytes(path: Path | str) -> int:
    """Bytes the entries below ``path`` take on disk (allocated blocks: a preallocated file
    counts whole); 0 if it is gone. Entries that vanish meanwhile are not counted."""
    total = 0
    try:
        for _fd, _rel, entries in walk_tree(path):
            for e in entries:
                try:
                    total += e.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    pass
    except FileNotFoundError:
        return 0
    return total


def pread(path: Path | str, offset: int, size: int) -> bytes | None:
    """``size`` bytes of ``path`` at ``offset``; None when it cannot be read or is shorter."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    return data if len(data) == size else None


def pwrite_fd(fd: int, offset: int, data: bytes | memoryview) -> None:
    """All of ``data`` written at ``offset`` of ``fd`` (``pwrite`` may write less at once)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
