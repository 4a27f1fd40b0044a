"""Where each chunk of a manifest goes in the staging tree, which are still missing, and
the descriptors the writer threads write them through (closed only once no thread writes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from packdist.agent.bases import BaseChunk
from packdist.core.digest import Digest
from packdist.core.fsutil import pread as pread  # their home is core/fsutil.py now
from packdist.core.fsutil import pwrite_fd as pwrite_fd
from packdist.core.manifest import Manifest
from packdist.errors import TransferError

log = logging.getLogger("packdist.agent")

CLOSE_WAIT = 30.0  # seconds to wait for a write left running by a cancelled task


Location = tuple[str, int]  # (relative path, offset)


class WritePlan:
    """Where each chunk of a manifest goes, and which are still missing."""

    def __init__(self, manifest: Manifest) -> None:
        self.sizes = manifest.chunk_sizes()
        self.locations: dict[Digest, list[Location]] = {}
        for path, offset, c in manifest.chunk_places():
            self.locations.setdefault(c.digest, []).append((path, offset))
        self.bases: dict[Digest, list[BaseChunk]] = {}  # see packdist.agent.bases
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._writers = 0  # worker threads using the descriptors now
        self._closed = False

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held by a worker thread while it writes: :meth:`close` waits for it. (Cancelling
        the task that awaits a thread does not stop the thread.)"""
        with self._lock:
            if self._closed:
                raise TransferError("the install ended while chunks were being written")
            self._writers += 1
        try:
            yield
        finally:
            with self._lock:
                self._writers -= 1
                self._idle.notify_all()

    def fd(self, path: Path) -> int:
        """A write descriptor for a staging file, opened once per fetch (not per chunk)."""
        with self._lock:
            if self._closed:
                raise TransferError("the install ended while chunks were being written")
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_WRONLY)
            return fd

    def close(self) -> None:
        """Close the descriptors once no thread writes through them any more."""
        with self._lock:
            self._closed = True
            if not self._idle.wait_for(lambda: self._writers == 0, timeout=CLOSE_WAIT):
                log.warning(
                    "a write to staging did not end in %ss: descriptors left open", CLOSE_WAIT
                )
                return  # never close a descriptor a thread may still write through
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
