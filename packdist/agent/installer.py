"""Installs a signed manifest: fetch what is missing, verify, build, rename into place.

Steps, so that a server holds the whole version or none of it:

1. check the signature (the site's key, or a key of a site above it: ``signers.py``), then
   parse the manifest (which validates every path);
2. a version already installed with the same package id is done at once (unless it is a
   repair: then it is rebuilt, taking from the damaged tree every chunk that still verifies);
3. lay out ``staging/<package id>/`` (same file system as ``packages/``) with every file
   preallocated: a disk that cannot hold the version fails here, before any transfer,
   with "disk full: need N, have M", and nothing is left behind (``local_stage.py``);
4. find each chunk locally if possible: already in the staging tree from an interrupted
   attempt (re-verified), or in an installed version that shares it (verified on read;
   ``local_stage.py``);
5. fetch the rest in streamed batches, naming for each chunk the chunks of an installed
   version it probably resembles (:mod:`packdist.agent.bases`) so the site can send it
   compressed against them; every chunk is decoded (:mod:`packdist.core.codec`) and
   verified against its digest before it is written at its offsets (``fetch_stage.py``);
6. set modes and times, create symlinks, ``syncfs``, then one ``rename`` into
   ``packages/NAME/VERSION`` -- or, if a tree is already there, one atomic exchange of the
   two names (``renameat2(RENAME_EXCHANGE)``), journalled so a crash at any point leaves a
   whole version in place and start-up recovery can tell which one (``commit_stage.py``).

The install's record is ``install_record.py``; where chunks go, ``write_plan.py``.

Bytes are written once, straight into the staging tree. The staging tree of an unfinished
install is kept across agent restarts, so chunks received before a crash are not fetched
again.

Every install reports ``phase`` (``layout``, ``local``, ``fetch``, ``finish``) and
``progress``, a counter that grows whenever the install does anything (a phase begins, an
entry is laid out or finished, a chunk is verified, received or written): the site watches
it to tell a slow install from a stalled one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from pathlib import Path

from packdist.agent.bases import choose_bases
from packdist.agent.commit_stage import journal_of, put_in_place, recover, settle
from packdist.agent.fetch_stage import FETCH_ERROR_PREFIX, FetchChunks, FetchStage, PeerFetch
from packdist.agent.home import AgentHome
from packdist.agent.install_record import Install, InstallState, Phase
from packdist.agent.local_stage import RESERVE, fill_locally, lay_out
from packdist.agent.peering import ChunkView
from packdist.agent.signers import TrustedSigners
from packdist.agent.sources import Peer
from packdist.agent.write_plan import WritePlan
from packdist.core.manifest import Manifest
from packdist.core.words import human_bytes
from packdist.errors import (
    Busy,
    DecodeError,
    ErrorKind,
    HashMismatch,
    PackdistError,
)
from packdist.ratelimit import Bucket

log = logging.getLogger("packdist.agent")

#: Install, InstallState and Phase live in agent/install_record.py now, the fetch in
#: agent/fetch_stage.py; re-exported here
__all__ = ["FETCH_ERROR_PREFIX", "RESERVE", "Install", "InstallState", "Installer", "Phase"]


class Installer(FetchStage):
    def __init__(
        self,
        home: AgentHome,
        fetch: FetchChunks,
        source: str = "the site",
        peer_fetch: PeerFetch | None = None,
        download: Bucket | None = None,
    ) -> None:
        super().__init__(fetch, source, peer_fetch, download)
        self.home = home
        self.installs: dict[str, Install] = {}
        self.removing: set[str] = set()  # NAME@VERSION being removed now: no install starts

    def chunk_view(self, package_id: str) -> ChunkView | None:
        """Where the chunks of a package being received here can be read, for peers."""
        inst = self.installs.get(package_id)
        if inst is None or inst.state is not InstallState.INSTALLING:
            return None
        return inst.view

    # --- entry points ---------------------------------------------------------------------

    async def start(
        self,
        data: bytes,
        signature: bytes,
        signers: TrustedSigners,
        repair: bool = False,
        peers: list[Peer] | None = None,
        me: str = "",
        job: str = "",
    ) -> Install:
        """Begin (or join) the install of a signed manifest; never blocks on the network.

        ``repair``: rebuild the version even if it is installed (validation found it damaged):
        a fresh staging tree takes every chunk that still verifies from the installed tree,
        only the damaged chunks are fetched, and the exchange replaces the damaged tree.

        The signature check, the parse and the look at ``installed.json`` run in a thread,
        off the event loop. Everything after the last ``await`` runs without yielding, so two
        concurrent requests for one package still make a single install: the second sees the
        first's entry in ``self.installs`` and joins it.
        """

        def check() -> tuple[Manifest, bool]:
            manifest = signers.verify_manifest(data, signature)
            return manifest, self.home.installed().get(manifest.ref) == manifest.id.hex

        self._loop = asyncio.get_running_loop()
        checked_at = time.monotonic()
        manifest, installed = await asyncio.to_thread(check)
        pid = manifest.id.hex
        if manifest.ref in self.removing:  # looked at after the await, like the rest
            raise Busy(
                f"{manifest.ref} is being removed on this agent; install refused until it ends"
            )
        current = self.installs.get(pid)  # looked up again, after the await
        if current is not None and (
            current.state is InstallState.INSTALLING
            or (
                current.state is InstallState.INSTALLED
                # the same job asking again (its attempt was cut), or our look at
                # installed.json may predate the end of that very install
                and (
                    (installed and not repair and current.job == job)
                    or (current.ended_at or 0.0) >= checked_at
                )
            )
        ):
            return current
        # another job asking for a version held already is answered afresh: the bytes of
        # the install that brought it here are not its own
        inst = Install(pid, manifest.ref, manifest.total_size, peers=peers or [], me=me, job=job)
        self.installs[pid] = inst
        if installed and not repair:
            inst.bytes_present = manifest.total_size
            inst.phase = Phase.FINISH
            inst.end(InstallState.INSTALLED)
            return inst
        inst.task = asyncio.create_task(self._run(inst, manifest), name=f"install {pid[:12]}")
        return inst

    def status(self, package_id: str) -> Install | None:
        return self.installs.get(package_id)

    def cancel(self, package_id: str) -> Install | None:
        """Stop an install under way (the site cancelled its instruction). One already
        putting its tree in place (``finish``) runs to its end: that step is never cut in
        half. What was fetched stays in staging, so a later install resumes from it."""
        inst = self.installs.get(package_id)
        if (
            inst is not None
            and inst.state is InstallState.INSTALLING
            and inst.phase is not Phase.FINISH
            and inst.task is not None
        ):
            inst.cancel_requested = True
            inst.task.cancel()
        return inst

    def recover(self) -> None:
        """Start-up recovery (see :func:`packdist.agent.commit_stage.recover`)."""
        recover(self.home)

    # --- the install ----------------------------------------------------------------------

    async def _run(self, inst: Install, manifest: Manifest) -> None:
        try:
            await self._install(inst, manifest)
            inst.end(InstallState.INSTALLED)
            log.info("installed %s (%s)", inst.ref, inst.package_id[:12])
        except asyncio.CancelledError:
            if not inst.cancel_requested:
                raise  # the agent is stopping
            inst.end(InstallState.CANCELLED, "cancelled by the site", ErrorKind.REFUSED)
            log.info("install of %s cancelled by the site", inst.ref)
        except PackdistError as exc:
            chunk = exc.digest if isinstance(exc, HashMismatch | DecodeError) else None
            inst.end(InstallState.FAILED, exc.message, exc.kind, chunk)
            log.warning("install of %s failed: %s", inst.ref, exc.message)
        except OSError as exc:
            kind = ErrorKind.DISK if exc.errno == errno.ENOSPC else ErrorKind.TRANSIENT
            inst.end(InstallState.FAILED, _os_error_words(exc), kind)
            log.warning("install of %s failed: %s", inst.ref, inst.error)
        except Exception as exc:  # a bug: say so, never hang
            inst.end(InstallState.FAILED, f"internal error in agent: {exc!r}", ErrorKind.INTERNAL)
            log.exception("install of %s failed", inst.ref)
        await asyncio.to_thread(self.trim_cache)  # a staging tree left behind counts

    def _running(self) -> frozenset[str]:
        """Ids of the installs under way (their staging trees are never evicted)."""
        installs = list(self.installs.items())  # a copy: also read from worker threads
        return frozenset(pid for pid, i in installs if i.state is InstallState.INSTALLING)

    def trim_cache(self, need: int = 0) -> None:
        """Bring the chunk cache within its limit (see :class:`AgentHome`), sparing the
        staging trees of installs under way; ``need``: also make that much room if it can."""
        try:
            self.home.trim_cache(self._running(), need)
        except OSError as exc:
            log.warning("trimming the chunk cache failed: %s", _os_error_words(exc))

    async def _install(self, inst: Install, manifest: Manifest) -> None:
        t0 = time.monotonic()
        plan = WritePlan(manifest)
        staging = self.home.staging / manifest.id.hex
        inst.enter(Phase.LAYOUT)
        if await asyncio.to_thread(settle, self.home, journal_of(self.home, manifest.id.hex)):
            inst.bytes_present = manifest.total_size  # an earlier attempt got it in place
            return
        resumed = await asyncio.to_thread(
            lay_out, self.home, self.trim_cache, inst, manifest, staging
        )
        inst.enter(Phase.LOCAL)
        try:
            missing = await asyncio.to_thread(fill_locally, self.home, inst, plan, staging, resumed)
            inst.bytes_present = manifest.total_size - sum(
                plan.sizes[d] * len(plan.locations[d]) for d in missing
            )
            inst.view = ChunkView.of(manifest, staging, set(plan.locations) - set(missing))
            self.pulse.fire()
            t1 = time.monotonic()
            if missing:
                inst.enter(Phase.FETCH)
                wanted = {d: inst.view.places[d] for d in missing}
                plan.bases = await asyncio.to_thread(
                    choose_bases, self.home, manifest, wanted, inst.tick
                )
                await self.fetch_missing(inst, plan, staging, missing)
        finally:
            # in a thread: closing waits for chunk writers, which must not stall the loop
            # (heartbeats, status polls, peers) when an install is cancelled mid-write
            await asyncio.to_thread(plan.close)
        t2 = time.monotonic()
        inst.enter(Phase.FINISH)
        await asyncio.to_thread(put_in_place, self.home, inst, manifest, staging)
        log.info(
            "%s: prepared in %.2fs (%s local), fetched %s (%s on the wire) in %.2fs,"
            " finished in %.2fs",
            inst.ref,
            t1 - t0,
            human_bytes(inst.bytes_present),
            human_bytes(inst.bytes_received),
            human_bytes(inst.bytes_wire),
            t2 - t1,
            time.monotonic() - t2,
        )


def _os_error_words(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {Path(exc.filename or '').name or 'a file'}"
    return f"{exc.strerror or exc}: {exc.filename or ''}".strip(": ")
