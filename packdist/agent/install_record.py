"""An install as the agent tracks it and the site reads it: its state, phase, counters
and progress (what ``GET /v1/installs/ID`` answers), for the stages of
``agent/installer.py`` to update.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum

from packdist.agent.peering import ChunkView
from packdist.agent.sources import Peer
from packdist.errors import ErrorKind
from packdist.protocol.messages import InstallStatus


class InstallState(StrEnum):
    INSTALLING = "installing"  # laying out, fetching or building
    INSTALLED = "installed"  # the tree is in place, verified
    FAILED = "failed"  # this attempt failed; ``error`` says why
    CANCELLED = "cancelled"  # the site cancelled it; the staging tree is kept for a resume


class Phase(StrEnum):
    LAYOUT = "layout"  # creating the staging tree, every file preallocated
    LOCAL = "local"  # finding chunks in the staging tree and installed versions
    FETCH = "fetch"  # fetching the missing chunks from the site
    FINISH = "finish"  # modes, times, symlinks, sync, rename into place


@dataclass
class Install:
    package_id: str
    ref: str
    bytes_total: int
    state: InstallState = InstallState.INSTALLING
    error: str | None = None
    error_kind: ErrorKind | None = None  # travels to the site: its retry policy reads it
    error_chunk: str | None = None
    cancel_requested: bool = False  # the site asked to stop it (not the agent stopping)
    bytes_received: int = 0  # chunk bytes received (decoded sizes)
    bytes_wire: int = 0  # what they took on the wire: frames, compressed or not
    bytes_present: int = 0
    ended_at: float | None = None  # time.monotonic() when the install ended
    phase: Phase = Phase.LAYOUT
    progress: int = 0  # grows whenever the install does anything (see the module docstring)
    task: asyncio.Task[None] | None = None
    view: ChunkView | None = None  # the chunks that landed so far, once laid out (peers)
    peers: list[Peer] = field(default_factory=list)  # where else chunks may come from
    me: str = ""  # this server's name, as the site and the peers know it
    bytes_from_peers: int = 0  # of bytes_wire, what came from peers
    job: str = ""  # the site's job that asked for it (its later attempts join it)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tick(self, n: int = 1) -> None:
        """Count ``n`` steps of work (called from the loop and from worker threads)."""
        with self._lock:
            self.progress += n

    def count(self, received: int, wire: int, from_peer: bool = False) -> None:
        """A chunk of ``received`` bytes landed, ``wire`` bytes on the wire (from worker
        threads: several at once)."""
        with self._lock:
            self.bytes_received += received
            self.bytes_wire += wire
            if from_peer:
                self.bytes_from_peers += wire
            self.progress += 1

    def enter(self, phase: Phase) -> None:
        self.phase = phase
        self.tick()

    def end(
        self,
        state: InstallState,
        error: str | None = None,
        kind: ErrorKind | None = None,
        chunk: str | None = None,
    ) -> None:
        self.state, self.error, self.error_kind, self.error_chunk = state, error, kind, chunk
        self.ended_at = time.monotonic()
        self.finished.set()

    async def wait(self, seconds: float) -> None:
        """Return when the install ends, or after ``seconds`` (for long polls)."""
        try:  # not wait_for: on Python 3.11 it can swallow a cancellation (despooler.py)
            async with asyncio.timeout(seconds):
                await self.finished.wait()
        except TimeoutError:
            pass

    def status(self) -> InstallStatus:
        return InstallStatus(
            package_id=self.package_id,
            package=self.ref,
            state=self.state.value,
            error=self.error,
            error_kind=self.error_kind.value if self.error_kind else None,
            error_chunk=self.error_chunk,
            bytes_received=self.bytes_received,
            bytes_wire=self.bytes_wire,
            bytes_from_peers=self.bytes_from_peers,
            bytes_done=min(self.bytes_total, self.bytes_present + self.bytes_received),
            bytes_total=self.bytes_total,
            phase=self.phase.value,
            progress=self.progress,
        )

    def to_json(self) -> dict[str, object]:
        return self.status().to_json()
