"""Store calls off the event loop: threads that run them, and batches that share a commit.

The site's event loop never waits on the database: every store call runs on a dedicated
thread (:class:`StoreRunner`). At fleet scale the commit itself is the cost (SQLite with
``synchronous=FULL`` syncs the disk on every one), so writes that many attempts make at
about the same moment, such as "installed on dp1", "installed on dp2", ..., go through a
:class:`WriteBatch`: whatever queued while the previous batch ran is written in one
transaction, one commit for all.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from packdist.errors import InvalidTransition
from packdist.store.base import Store

T = TypeVar("T")


class StoreRunner:
    """Runs store calls on dedicated threads, so the event loop never blocks on the
    database: one for SQLite (one connection), as many as the pool for PostgreSQL."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(store.concurrency, thread_name_prefix="store")

    async def __call__(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self.store)

    def close(self) -> None:
        self._pool.submit(self.store.close).result()
        self._pool.shutdown()


class WriteBatch:
    """Writes of many callers, each in the transaction of a batch.

    A write is a function of the store that either writes, or raises
    :class:`InvalidTransition` before it writes anything (a lost lease: the guarded change
    found nothing to change). That error is its caller's alone; any other failure (a
    database error aborts the whole transaction on PostgreSQL) fails the whole batch,
    which then wrote nothing, and reaches every caller in it.
    """

    def __init__(self, db: StoreRunner, most: int = 256) -> None:
        self.db = db
        self.most = most  # writes in one transaction: a long one would hold the store
        self._queue: list[tuple[Callable[[Store], Any], asyncio.Future[Any]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def __call__(self, fn: Callable[[Store], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain(), name="write batch")
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.most], self._queue[self.most :]
                try:
                    writes = [fn for fn, _ in batch]
                    outcomes = await self.db(functools.partial(_write_all, writes=writes))
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), (value, error) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(value)
        finally:
            self._draining = None


def _write_all(
    store: Store, *, writes: list[Callable[[Store], Any]]
) -> list[tuple[Any, InvalidTransition | None]]:
    outcomes: list[tuple[Any, InvalidTransition | None]] = []
    with store.transaction():
        for write in writes:
            try:
                outcomes.append((write(store), None))
            except InvalidTransition as exc:  # it changed nothing: the others stand
                outcomes.append((None, exc))
    return outcomes
