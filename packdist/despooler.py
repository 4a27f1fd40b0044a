"""The despooler: workers that carry out instructions, one per target server.

A worker claims ready instructions under a lease, tells each agent to install the signed
manifest, follows the install until the agent reports it verified, and records the result.
Each instruction runs as its own task with timeouts on every call, so a dead or hung server
holds only its own instruction. Failures go through the one :class:`RetryPolicy`; attempts,
last error and next attempt time live in the store, so they survive a restart. A worker
that dies keeps nothing: its lease expires and the instruction returns to the queue.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

from packdist.agent.client import AgentClient
from packdist.core.signing import SigningKey
from packdist.errors import IntegrityError, InvalidTransition, PackdistError, RemoteError
from packdist.retry import RetryPolicy
from packdist.store.base import Claim, Store

log = logging.getLogger("packdist.despooler")
T = TypeVar("T")

LONG_POLL = 2.0  # an agent answers a status question at the latest after this long
RENEW_EVERY = 2.0  # seconds between two lease renewals (and progress writes)
STALL_LIMIT = 120.0  # an install that makes no progress this long is given up (and retried)


class StoreRunner:
    """Runs store calls on one dedicated thread, so the event loop never blocks on SQLite."""

    def __init__(self, store: Store) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="store")

    async def __call__(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self.store)

    def close(self) -> None:
        self._pool.submit(self.store.close).result()
        self._pool.shutdown()


class Despooler:
    def __init__(
        self,
        db: StoreRunner,
        key: SigningKey,
        session: aiohttp.ClientSession,
        policy: RetryPolicy | None = None,
        max_in_flight: int = 64,
        lease: float = 10.0,
        poll: float = 0.2,
    ) -> None:
        self.db = db
        self.key = key
        self.session = session
        self.policy = policy or RetryPolicy()
        self.max_in_flight = max_in_flight
        self.lease = lease
        self.poll = poll
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.wake = asyncio.Event()
        self.in_flight: dict[int, asyncio.Task[None]] = {}

    async def run(self) -> None:
        recovered = await self.db(lambda s: s.recover_expired_leases(time.time()))
        if recovered:
            log.info("recovered %d instruction(s) from a stopped worker", recovered)
        last_recovery = time.monotonic()
        while True:
            free = self.max_in_flight - len(self.in_flight)
            if free > 0:
                for c in await self.db(functools.partial(self._claim, free)):
                    self._spawn(c)
            if time.monotonic() - last_recovery > self.lease / 2:
                await self.db(lambda s: s.recover_expired_leases(time.time()))
                last_recovery = time.monotonic()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.poll)
            except TimeoutError:
                pass
            self.wake.clear()

    def _claim(self, limit: int, store: Store) -> list[Claim]:
        return store.claim_ready(self.owner, self.lease, limit, time.time())

    def _spawn(self, c: Claim) -> None:
        task = asyncio.create_task(self._attempt(c), name=f"instruction {c.instruction_id}")
        self.in_flight[c.instruction_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self.in_flight.pop(c.instruction_id, None)

        task.add_done_callback(done)

    async def shutdown(self) -> None:
        """Stop attempts and hand their instructions back to the queue, due at once."""
        tasks = list(self.in_flight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.db(lambda s: s.release_leases(self.owner, time.time()))

    # --- one attempt ----------------------------------------------------------------------

    async def _attempt(self, c: Claim) -> None:
        try:
            await self._install(c)
        except InvalidTransition:
            log.info("instruction %d changed under us (cancelled?); dropping it", c.instruction_id)
        except PackdistError as exc:
            await self._failed(c, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must still leave a visible, retried instruction
            log.exception("attempt for instruction %d crashed", c.instruction_id)
            await self._failed(c, f"internal error in despooler: {exc!r}")

    async def _install(self, c: Claim) -> None:
        manifest, signature = await self.db(lambda s: s.package_manifest(c.package_id))
        client = AgentClient(c.server, c.server_url, self.key, self.session)
        status: dict[str, Any] | None = await client.install(manifest, signature)
        last_renew = time.monotonic()
        progress_at, progress = time.monotonic(), -1
        while True:
            assert status is not None
            state = status.get("state")
            received = int(status.get("bytes_received", 0))
            if state == "installed":
                if status.get("package_id") != c.package_id:
                    raise IntegrityError(
                        f"{c.server} reported package id {str(status.get('package_id'))[:12]}…,"
                        f" expected {c.package_id[:12]}…"
                    )
                await self._renew(c, received, status)
                await self.db(lambda s: s.mark_installed(c.instruction_id, self.owner, time.time()))
                log.info("%s installed on %s", c.package_ref, c.server)
                return
            if state == "failed":
                raise RemoteError(str(status.get("error") or "install failed on the agent"))
            done = int(status.get("bytes_done", 0))
            if done != progress:
                progress_at, progress = time.monotonic(), done
            elif time.monotonic() - progress_at > STALL_LIMIT:
                raise RemoteError(f"install on {c.server} made no progress for {STALL_LIMIT:.0f}s")
            if time.monotonic() - last_renew >= RENEW_EVERY:
                if not await self._renew(c, received, status):
                    log.info("lost the lease on instruction %d (cancelled?)", c.instruction_id)
                    return
                last_renew = time.monotonic()
            status = await client.status(c.package_id, wait=LONG_POLL)
            if status is None:  # the agent restarted and forgot: ask again, it resumes
                status = await client.install(manifest, signature)

    async def _renew(self, c: Claim, received: int, status: dict[str, Any]) -> bool:
        total = int(status.get("bytes_total", 0))
        return await self.db(
            lambda s: s.renew_lease(
                c.instruction_id, self.owner, time.time() + self.lease, received, total
            )
        )

    async def _failed(self, c: Claim, error: str) -> None:
        policy = self.policy.with_limits(c.max_attempts, c.deadline)
        now = time.time()
        decision = policy.decide(c.attempts - c.attempts_base, c.job_created_at, now)
        try:
            if decision.give_up:
                await self.db(
                    lambda s: s.mark_failed(
                        c.instruction_id, self.owner, f"{error} ({decision.reason})", now
                    )
                )
                log.warning("%s to %s failed for good: %s", c.package_ref, c.server, error)
            else:
                retry_at = decision.retry_at
                assert retry_at is not None
                await self.db(
                    lambda s: s.schedule_retry(c.instruction_id, self.owner, error, retry_at, now)
                )
                log.info(
                    "%s to %s: %s; retry in %.1fs", c.package_ref, c.server, error, retry_at - now
                )
        except InvalidTransition:
            log.info("instruction %d was cancelled meanwhile", c.instruction_id)
