"""Small file-system helpers: durable writes, atomic exchange, syncfs, free space."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets
import threading
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

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


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
