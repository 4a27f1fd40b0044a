"""One long-running process per home: ``site serve`` on a SQLite home, ``agent serve`` on
an agent's home. An exclusive ``fcntl`` lock on a file in the home, held as long as the
process lives (the kernel lets it go when the process ends, however it ends: no stale lock
to clean up after a SIGKILL), with the holder's pid written in it for the refusal."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from packdist.errors import UserError

#: the lock's file in the home (the same name for a site and an agent: never one home)
LOCK_FILE = "serve.lock"


class HomeLocked(UserError):
    """Another process serves this home."""


def lock_home(home: Path, what: str) -> int:
    """Take the home's lock for this process (``what``: "site server", "agent") and return
    its descriptor, to be kept open while the process serves; HomeLocked naming the pid
    that holds it when another does."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        pid = f" (pid {holder})" if holder else ""
        raise HomeLocked(f"another {what} is running on this home{pid}: {home}") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
