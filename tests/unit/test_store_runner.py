"""Store writes of many attempts, batched into one transaction (site/store_runner.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from packdist.errors import InvalidTransition, StoreError
from packdist.service import Service
from packdist.site.home import SiteHome
from packdist.site.importer import import_tree
from packdist.site.store_runner import StoreRunner, WriteBatch
from packdist.store.base import Claim, Store


def _site_with_claims(tmp_path: Path, servers: int) -> tuple[SiteHome, list[Claim]]:
    home = SiteHome.init(tmp_path / "site", "s")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 1000)
    record, _ = import_tree(home, src, "app", "1.0")
    store = home.store()
    try:
        now = time.time()
        names = [f"dp{i}" for i in range(servers)]
        with store.transaction():
            for name in names:
                Service(store).add_server(name, f"http://{name}:1", f"h-{name}", [], None, now)
        Service(store).distribute(record.id, names, now)
        claims = Service(store).claim_ready("worker:1", 30.0, servers, now)
    finally:
        store.close()
    assert len(claims) == servers
    return home, claims


def _installed(store: Store, claims: list[Claim]) -> set[str]:
    """The servers of ``claims`` whose instruction reads installed in the store."""
    return {
        c.server
        for c in claims
        if (row := store.instruction(c.instruction_id)) is not None and row["state"] == "installed"
    }


def test_attempts_ending_together_are_all_written_and_a_lost_lease_fails_only_its_own(
    tmp_path: Path,
) -> None:
    home, claims = _site_with_claims(tmp_path, 40)
    lost = claims[7]

    async def finish() -> list[BaseException | None]:
        runner = StoreRunner(home.store())
        batch = WriteBatch(runner)
        try:

            async def one(c: Claim) -> None:
                lease = "someone-else" if c is lost else c.lease
                await batch(
                    lambda s: Service(s).mark_installed(c.instruction_id, lease, time.time())
                )

            results = await asyncio.gather(*(one(c) for c in claims), return_exceptions=True)
            return [r if isinstance(r, BaseException) else None for r in results]
        finally:
            runner.close()

    errors = asyncio.run(finish())
    assert isinstance(errors[7], InvalidTransition)
    assert [e for i, e in enumerate(errors) if i != 7] == [None] * 39
    store = home.store()
    try:
        assert _installed(store, claims) == {c.server for c in claims} - {lost.server}
    finally:
        store.close()


@pytest.mark.parametrize("error", [RuntimeError("a bug"), StoreError("database error: deadlock")])
def test_a_batch_that_fails_writes_nothing_and_every_caller_hears_of_it(
    tmp_path: Path, error: Exception
) -> None:
    home, claims = _site_with_claims(tmp_path, 5)

    def broken(store: Store) -> None:
        raise error

    async def finish() -> list[BaseException | None]:
        runner = StoreRunner(home.store())
        batch = WriteBatch(runner)
        try:
            calls = [
                batch(lambda s, c=c: Service(s).mark_installed(c.instruction_id, c.lease, 1.0))
                for c in claims
            ]
            calls.append(batch(broken))  # queued with the others: one transaction
            results = await asyncio.gather(*calls, return_exceptions=True)
            return [r if isinstance(r, BaseException) else None for r in results]
        finally:
            runner.close()

    errors = asyncio.run(finish())
    assert all(e is error for e in errors), errors
    store = home.store()
    try:
        assert _installed(store, claims) == set()
    finally:
        store.close()


@pytest.mark.parametrize("most", [1, 3])
def test_writes_beyond_one_batch_run_in_the_next(tmp_path: Path, most: int) -> None:
    home, claims = _site_with_claims(tmp_path, 7)

    async def finish() -> None:
        runner = StoreRunner(home.store())
        batch = WriteBatch(runner, most=most)
        try:
            await asyncio.gather(
                *(
                    batch(lambda s, c=c: Service(s).mark_installed(c.instruction_id, c.lease, 1.0))
                    for c in claims
                )
            )
        finally:
            runner.close()

    asyncio.run(finish())
    store = home.store()
    try:
        assert _installed(store, claims) == {c.server for c in claims}
    finally:
        store.close()
