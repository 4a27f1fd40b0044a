"""The despooler: workers that carry out instructions, one per target server.

A worker claims ready instructions under a lease, tells each agent to install the signed
manifest (or, for a removal job, to remove the version), follows the install until the agent
reports it verified, and records the result.
Each instruction runs as its own task with timeouts on every call, so a dead or hung server
holds only its own instruction. Failures go through the one :class:`RetryPolicy`; attempts,
last error and next attempt time live in the store, so they survive a restart. A worker
that dies keeps nothing: its lease expires and the instruction returns to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from packdist.core.signing import SigningKey
from packdist.errors import (
    ErrorKind,
    IntegrityError,
    InternalError,
    InvalidTransition,
    PackdistError,
    RemoteError,
    TransferError,
)
from packdist.protocol.messages import InstallStatus
from packdist.retry import RetryPolicy
from packdist.sender import Sender, WindowClosed, activate, behind_child
from packdist.service import Service
from packdist.service.activation import ACTIVATE
from packdist.site import cadence
from packdist.site.install_inputs import InstallInputs, chunk_fault
from packdist.site.library import ContentLibrary
from packdist.site.slot_shares import SlotShares
from packdist.site.store_runner import StoreRunner, WriteBatch
from packdist.site.tracker import DEFAULT_LOCATION_LABEL
from packdist.states import InstructionState as S
from packdist.store.base import Claim, Store
from packdist.store.wakeup import SAFETY, woken

log = logging.getLogger("packdist.despooler")

__all__ = ["Despooler", "PeerSettings", "StoreRunner"]  # StoreRunner: its old home

LONG_POLL = 2.0  # an agent answers a status question at the latest after this long
RENEW_EVERY = 2.0  # at most this long between two lease renewals (and progress writes)
SILENT_AFTER = cadence.SILENT_AFTER  # re-exported: its home is the heartbeat cadence
MAX_IDLE = SAFETY  # with wake-ups, the longest wait between two looks (store/wakeup.py)
STALL_LIMIT = 120.0  # an install that makes no progress this long is given up (and retried)


@dataclass(frozen=True)
class PeerSettings:
    """Whether agents are told about peers, and which server label names a location."""

    enabled: bool = True
    location_label: str = DEFAULT_LOCATION_LABEL


class Despooler:
    def __init__(
        self,
        db: StoreRunner,
        key: SigningKey,
        session: aiohttp.ClientSession,
        policy: RetryPolicy | None = None,
        max_in_flight: int = 64,
        lease: float = 10.0,
        poll: float = 0.1,  # without wake-ups (no inotify here): seconds between looks
        safety: float = MAX_IDLE,  # with wake-ups: the longest wait between two looks
        peers: PeerSettings | None = None,
        library: ContentLibrary | None = None,  # the site's chunks: to tell where damage came from
        on_installed: Callable[[str, str], None] | None = None,  # (server, package id) recorded
        silent_after: Callable[[], float] = lambda: SILENT_AFTER,  # the site's, as it changes
        on_retry: Callable[[str], None] | None = None,  # told the server of a failed attempt
        heard: Callable[[str], float | None] = lambda server: None,  # the site's liveness
    ) -> None:
        self.db, self.key, self.session = db, key, session
        self.on_installed, self.on_retry, self.silent_after = on_installed, on_retry, silent_after
        self.results = WriteBatch(db)  # attempts that end together share one commit
        self.library, self.peers = library, peers or PeerSettings()
        self.policy = policy or RetryPolicy()
        self.max_in_flight, self.lease, self.poll, self.safety = max_in_flight, lease, poll, safety
        # Renewed three times per lease at least: a renewal late by a busy moment (or a
        # slow database) still comes before the lease runs out.
        self.renew_every = min(RENEW_EVERY, lease / 3)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.wake = asyncio.Event()
        self.in_flight: dict[int, asyncio.Task[None]] = {}
        # servers not heard from lately, and child sites, each have a share of the slots:
        # thousands of hung servers or one slow link must never hold every slot
        self.shares = SlotShares(max_in_flight, silent_after)
        self._claims = 0
        self._next_due: float | None = None  # as last read: when work is due next
        self._notified = False  # other workers and the CLI wake us (NOTIFY, inotify)
        self.sender = Sender(db, key, session)  # an agent, or a child site for its servers
        self.inputs = InstallInputs(db, key, self.peers.location_label, silent_after, heard)

    async def run(self) -> None:
        """Claim and start ready instructions until cancelled. A failing pass (the database
        busy or gone) is logged and retried; it never ends the despooler."""
        last_recovery = 0.0
        loop = asyncio.get_running_loop()

        def wake_soon() -> None:  # called from the store's listening (or watching) thread
            loop.call_soon_threadsafe(self.wake.set)

        listening = await self.db(lambda s: s.listen(wake_soon))  # PostgreSQL's NOTIFY
        with woken(self.db.store, listening, wake_soon) as self._notified:  # or SQLite's file
            while True:
                try:
                    if time.monotonic() - last_recovery > self.lease / 2:
                        recovered = await self.db(
                            lambda s: Service(s).recover_expired_leases(time.time())
                        )
                        if recovered:
                            log.info("returned %d instruction(s) of a stopped worker", recovered)
                        last_recovery = time.monotonic()
                    await self._claim_and_start()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("despooler pass failed; trying again in 1s")
                    await asyncio.sleep(1.0)
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that comes as the event is set (the site then never stops)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle()):
                        await self.wake.wait()
                self.wake.clear()

    def _idle(self) -> float:
        """How long to wait for a wake-up: until due work, at most ``safety``; else ``poll``."""
        if not self._notified:
            return self.poll
        if self._next_due is None or self.shares.held_back:
            return self.safety
        return min(self.safety, max(0.005, self._next_due - time.time()))

    async def _claim_and_start(self) -> None:
        """Claim due instructions in batches as slots are free, each batch under a lease
        name of its own, so a stale attempt can never act on a later claim."""
        while len(self.in_flight) < self.max_in_flight:
            self._claims += 1
            lease = f"{self.owner}:{self._claims}"
            claims = await self.db(functools.partial(self._claim, lease))
            for c, silent in claims:
                self._spawn(c, silent)
            if not claims or self.shares.held_back:
                return

    def _claim(self, lease: str, store: Store) -> list[tuple[Claim, bool]]:
        """Due instructions within the free slots and their shares (site/slot_shares.py)."""
        now = time.time()
        due = self._next_due = store.next_due_at()  # a plain read: no lock when idle
        self.shares.held_back = False
        if due is None or due > now:
            return []
        free = self.max_in_flight - len(self.in_flight)
        return self.shares.claim(Service(store), lease, self.lease, free, now)

    def _spawn(self, c: Claim, silent: bool) -> None:
        if c.instruction_id in self.in_flight:  # cannot happen with leases; never run twice
            log.error("instruction %d is already under way here", c.instruction_id)
            return
        task = asyncio.create_task(self._attempt(c), name=f"instruction {c.instruction_id}")
        self.in_flight[c.instruction_id] = task
        self.shares.started(c, silent)

        def done(t: asyncio.Task[None]) -> None:
            if self.in_flight.get(c.instruction_id) is t:
                del self.in_flight[c.instruction_id]
                self.shares.ended(c)
                self.wake.set()  # a slot is free: look for work at once

        task.add_done_callback(done)

    async def shutdown(self) -> None:
        """Stop attempts and hand their instructions back to the queue, due at once."""
        tasks = list(self.in_flight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.db(lambda s: Service(s).release_leases(self.owner, time.time()))

    # --- one attempt ----------------------------------------------------------------------

    async def _attempt(self, c: Claim) -> None:
        progress = _Progress()
        keeper = asyncio.create_task(self._keep_lease(c, progress))
        try:
            if c.action == "remove":
                await self._remove(c)
            else:
                await self._install(c, progress)
        except InvalidTransition:
            log.info(
                "instruction %d: our lease is gone (cancelled or taken over)", c.instruction_id
            )
        except PackdistError as exc:
            if not progress.lost:
                await self._failed(c, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must still leave a visible, retried instruction
            log.exception("attempt for instruction %d crashed", c.instruction_id)
            await self._failed(c, InternalError(f"internal error in despooler: {exc!r}"))
        finally:
            keeper.cancel()

    async def _keep_lease(self, c: Claim, progress: _Progress) -> None:
        """Renew the lease (and write progress) on its own clock, whatever the agent calls
        are doing; a lost lease (cancelled, or expired and taken over) stops the attempt."""
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                held = await self._renew(c, progress)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("renewing the lease of instruction %d failed", c.instruction_id)
                continue
            if not held:
                log.info("instruction %d: lease lost (cancelled or taken over)", c.instruction_id)
                await self._stop_on_agent(c)  # before the attempt ends and cancels us
                progress.lost = True
                return

    async def _stop_on_agent(self, c: Claim) -> None:
        """A cancel reaches the agent: an install whose instruction no longer runs (it was
        cancelled, or its server removed) stops there too, rather than finishing behind an
        instruction that reads ``cancelled``. One taken over by another worker is left to
        it: that worker drives the same install."""
        if c.action != "install":
            return
        row = await self.db(lambda s: s.instruction(c.instruction_id))
        if row is None or row["state"] != S.CANCELLED.value:
            return  # retrying (the lease ran out) or taken over: the install is still wanted
        # The agent runs one install per package, which another instruction (a second job,
        # a repair) may be driving right now: leave it to that one.
        if await self.db(lambda s: s.installs_under_way(c.server, c.package_id)):
            return
        try:
            client = await self.sender.client(c, transfer=False)
            await client.cancel(c.package_id)
            log.info("told %s to stop installing %s", c.server, c.package_ref)
        except PackdistError as exc:  # unreachable: it finds out when it reports
            log.info("could not tell %s to stop: %s", c.server, exc.message)

    async def _renew(self, c: Claim, progress: _Progress) -> bool:
        """Extend the lease and record progress; False if the lease is gone."""
        return await self.db(
            lambda s: s.renew_lease(
                c.instruction_id,
                c.lease,
                time.time() + self.lease,
                progress.received,
                progress.total,
                progress.from_peers,
                progress.done,
                progress.phase,
            )
        )

    async def _peers(self, c: Claim) -> tuple[str, list[dict[str, Any]]]:
        """The peers and their credential, unless peers are off for the site or for this
        job (``--no-peers``)."""
        if not self.peers.enabled or c.options.get("peers") is False or behind_child(c.server):
            return "", []  # (a child's servers take peers from their own site)
        return await self.inputs.peers(c)

    async def _install(self, c: Claim, progress: _Progress) -> None:
        manifest, signature = await self.inputs.manifest(c.package_id)
        client = await self.sender.client(c)
        repair = bool(c.options.get("repair"))  # a flag of the job: every attempt reads it
        token, peers = await self._peers(c)
        status: InstallStatus | None = await client.install(
            manifest, signature, repair, peers, token, c.job_id
        )
        moved_at, last_mark = time.monotonic(), None
        while not progress.lost:
            assert status is not None
            progress.received = status.bytes_wire  # what crossed the wire (compressed)
            progress.total = status.bytes_total
            progress.from_peers = status.bytes_from_peers
            progress.done = status.bytes_done
            progress.phase = status.phase
            if status.state == "installed":
                if status.package_id != c.package_id:
                    raise IntegrityError(
                        f"{c.server} reported package id {status.package_id[:12]}…,"
                        f" expected {c.package_id[:12]}…"
                    )
                activating = bool(c.options.get(ACTIVATE))
                if activating:  # installed and verified: now make it the active version
                    await activate(client, c)
                final = (progress.received, progress.total, progress.from_peers, progress.done)
                await self.results(
                    functools.partial(_mark_installed, c.instruction_id, c.lease, final, activating)
                )
                self.inputs.installed(c.package_id, c.server)
                if self.on_installed is not None:
                    self.on_installed(c.server, c.package_id)
                log.info("%s installed on %s", c.package_ref, c.server)
                return
            if status.state == "cancelled":  # stopped there while this attempt runs here
                why = f": {status.error}" if status.error else ""
                raise RemoteError(f"the install was stopped on {c.server}{why}; trying again")
            if status.state == "failed":
                error = status.error or "install failed on the agent"
                if status.kind is ErrorKind.INTEGRITY:
                    if status.error_chunk:  # which copy is damaged: the library's, or ours?
                        raise await chunk_fault(self.library, c, status.error_chunk, error)
                    # content that failed on the agent without a chunk named: a fresh
                    # attempt re-verifies everything, so it is worth one
                    raise RemoteError(error, kind=ErrorKind.TRANSIENT)
                raise RemoteError(error, kind=status.kind)
            mark = (status.progress, status.phase, status.bytes_done)
            if mark != last_mark:
                moved_at, last_mark = time.monotonic(), mark
            elif time.monotonic() - moved_at > STALL_LIMIT:
                raise RemoteError(f"install on {c.server} made no progress for {STALL_LIMIT:.0f}s")
            status = await client.status(c.package_id, wait=LONG_POLL)
            if status is None:  # the agent restarted and forgot: ask again, it resumes
                token, peers = await self._peers(c)
                status = await client.install(manifest, signature, repair, peers, token, c.job_id)

    async def _remove(self, c: Claim) -> None:
        """A removal: one call; the agent answers once the version is out of ``packages/``
        (or refuses while it is installing that version: retried like any failure)."""
        client = await self.sender.client(c, transfer=False)
        answer = await client.remove(c.package_id, c.package_ref)
        if answer.get("state") != "removed":
            raise RemoteError(str(answer.get("error") or f"{c.server} did not confirm the removal"))
        await self.results(
            lambda s: Service(s).mark_removed(c.instruction_id, c.lease, time.time())
        )
        log.info("%s removed from %s", c.package_ref, c.server)

    async def _failed(self, c: Claim, exc: PackdistError) -> None:
        """Record a failed attempt; its kind, with the retry policy, decides what next."""
        error, kind = exc.message, exc.kind
        now = time.time()
        try:
            if isinstance(exc, WindowClosed):  # not a failure: due again when it opens
                opens = exc.opens_at or now + self.policy.cap
                await self.db(lambda s: Service(s).wait_for_window(c, error, opens, now))
                return
            retried = await self.db(
                lambda s: Service(s).record_failure(c, error, kind, self.policy, now)
            )
            if retried:
                log.info("%s to %s: %s", c.package_ref, c.server, error)
                unanswered = not isinstance(exc, RemoteError) or exc.status is None
                if self.on_retry is not None and isinstance(exc, TransferError) and unanswered:
                    self.on_retry(c.server)  # not reached: its next heartbeat wakes the retry
            else:
                log.warning("%s to %s failed for good: %s", c.package_ref, c.server, error)
        except InvalidTransition:
            log.info(
                "instruction %d: our lease is gone (cancelled or taken over)", c.instruction_id
            )
        except Exception:  # the lease runs out and the instruction returns to the queue
            log.exception("recording the failure of instruction %d failed", c.instruction_id)


def _mark_installed(
    instruction_id: int,
    lease: str,
    final: tuple[int, int, int, int],
    activated: bool,
    store: Store,
) -> None:
    service = Service(store)
    mark = service.mark_activated if activated else service.mark_installed
    mark(instruction_id, lease, time.time(), final)


@dataclass
class _Progress:
    """What an attempt has learnt from its agent, shared with its lease keeper."""

    received: int = 0  # bytes on the wire to the agent (``bytes_sent`` in the store)
    total: int = 0
    from_peers: int = 0  # of ``received``, what came from peers
    done: int = 0  # of ``total``, what the agent holds so far
    phase: str | None = None  # where it is, in the target's words
    lost: bool = False
