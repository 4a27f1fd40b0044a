"""The despooler driven directly: a real store and site home, a real HTTP fake agent.

Each fake agent answers the agent protocol (install, status, cancel) the way a test asks,
so the despooler's own rules are tested one by one: what counts as installed, when it gives
up, how it keeps its lease, how a failure's kind decides what comes next, and that a cancel
reaches the agent.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from packdist.core.digest import Digest
from packdist.despooler import Despooler, StoreRunner
from packdist.http import new_session
from packdist.retry import RetryPolicy
from packdist.service import Service
from packdist.site.home import SiteHome
from packdist.site.importer import import_tree
from packdist.store.core import Store
from tests.harness import free_port

pytestmark = pytest.mark.timeout(60)
PACKAGE = web.AppKey("package_id", str)
# How long a scenario may take to reach its end. Each takes a few seconds; `make mutation`
# lowers the bound, since a mutant that never gets there would hold its run this long.
DRIVE_TIMEOUT = float(os.environ.get("PACKDIST_DRIVE_TIMEOUT", "20"))


@dataclass
class FakeAgent:
    """An agent that installs in ``install_seconds`` and then reports ``outcome``."""

    install_seconds: float = 0.0
    outcome: Callable[[str], dict[str, Any]] = lambda pid: {"state": "installed", "package_id": pid}
    installs: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)

    def _status(self, pid: str) -> dict[str, Any]:
        if pid in self.cancels:
            return {"state": "cancelled", "package_id": pid}
        elapsed = time.monotonic() - self.started[pid]
        if elapsed < self.install_seconds:  # progress moves: the despooler sees it alive
            return {"state": "installing", "package_id": pid, "progress": int(elapsed * 100)}
        return self.outcome(pid)

    async def install(self, request: web.Request) -> web.Response:
        pid = request.app[PACKAGE]
        self.installs.append(pid)
        self.started.setdefault(pid, time.monotonic())
        return web.json_response(self._status(pid), status=202)

    async def status(self, request: web.Request) -> web.Response:
        pid = request.match_info["package_id"]
        wait = float(request.query.get("wait", "0"))
        await asyncio.sleep(min(wait, 0.2))
        return web.json_response(self._status(pid))

    async def cancel(self, request: web.Request) -> web.Response:
        pid = request.match_info["package_id"]
        self.cancels.append(pid)
        return web.json_response({"state": "cancelled", "package_id": pid})


@dataclass
class Rig:
    home: SiteHome
    store: Store
    package_id: str
    chunks: list[str]  # the library's chunk files (hex digests)

    def service(self) -> Service:
        return Service(self.store)

    def job(self, job_id: str) -> Any:
        return self.store.get_job(job_id)


@asynccontextmanager
async def rig(tmp_path: Path, **agents: FakeAgent) -> AsyncIterator[Rig]:
    """A site home with one small package, and each fake agent enrolled as a server."""
    home = SiteHome.init(tmp_path / "site", "s")
    src = tmp_path / "src"
    src.mkdir()
    (src / "file.bin").write_bytes(b"packdist " * 5000)
    record, _ = import_tree(home, src, "app", "1.0")
    store = home.store()
    runners: list[web.AppRunner] = []
    try:
        for name, agent in agents.items():
            app = web.Application()
            app[PACKAGE] = record.id
            app.router.add_post("/v1/install", agent.install)
            app.router.add_get("/v1/installs/{package_id}", agent.status)
            app.router.add_post("/v1/installs/{package_id}/cancel", agent.cancel)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            url = f"http://127.0.0.1:{port}"
            Service(store).add_server(name, url, f"hash-{name}", [], None, time.time())
        chunks = sorted(p.name for p in (home.root / "library").glob("??/*") if len(p.name) == 64)
        yield Rig(home, store, record.id, chunks)
    finally:
        for r in runners:
            await r.cleanup()
        store.close()


async def drive(
    rig: Rig,
    job_id: str,
    until: Callable[[Any], bool],
    lease: float = 10.0,
    timeout: float = DRIVE_TIMEOUT,
) -> Any:
    """Run a despooler on the rig's site until ``until(job)`` holds (or ``timeout``)."""
    runner = StoreRunner(rig.home.store())
    session = new_session()
    policy = RetryPolicy(initial=0.05, factor=1.0, cap=0.05, jitter=0.0)
    despooler = Despooler(
        runner,
        rig.home.signing_key(),
        session,
        policy=policy,
        lease=lease,
        library=rig.home.library,
    )
    task = asyncio.create_task(despooler.run())
    try:
        deadline = time.monotonic() + timeout
        while True:
            job = rig.job(job_id)
            if until(job):
                return job
            assert time.monotonic() < deadline, f"timed out: {job}"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await despooler.shutdown()
        await session.close()
        runner.close()


def done(job: Any) -> bool:
    return all(i.state.value in ("installed", "failed", "cancelled") for i in job.instructions)


def test_an_installed_report_for_another_package_id_is_not_taken_as_installed(
    tmp_path: Path,
) -> None:
    liar = FakeAgent(outcome=lambda pid: {"state": "installed", "package_id": "f" * 64})

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=liar) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done), r.store.holdings("dp1")

    job, holdings = asyncio.run(scenario())
    (i,) = job.instructions
    assert i.state.value == "failed"
    assert i.error_kind == "integrity"
    assert "reported package id ffffffffffff" in (i.last_error or "")
    assert holdings == set()


def test_giving_up_counts_attempts_since_the_operators_last_retry(tmp_path: Path) -> None:
    failing = FakeAgent(outcome=lambda pid: {"state": "failed", "error": "disk busy"})

    async def scenario() -> tuple[Any, Any]:
        async with rig(tmp_path, dp1=failing) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time(), max_attempts=2)
            first = await drive(r, job_id, done)
            # An operator retry gives the instruction its two attempts again, not none.
            r.service().retry_job(job_id, time.time())
            await asyncio.sleep(0.01)
            return first, await drive(
                r, job_id, lambda j: done(j) and j.instructions[0].attempts > 2
            )

    first, second = asyncio.run(scenario())
    assert (first.instructions[0].state.value, first.instructions[0].attempts) == ("failed", 2)
    (i,) = second.instructions
    assert (i.state.value, i.attempts) == ("failed", 4)
    assert "gave up after 2 attempts" in (i.last_error or "")


def test_an_install_longer_than_the_lease_keeps_its_lease(tmp_path: Path) -> None:
    slow = FakeAgent(install_seconds=4.0)

    async def scenario() -> tuple[Any, list[str]]:
        async with rig(tmp_path, dp1=slow) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            job = await drive(r, job_id, done, lease=1.2)
            return job, [e.kind for e in r.store.events(job_id)]

    job, kinds = asyncio.run(scenario())
    (i,) = job.instructions
    assert i.state.value == "installed"
    assert i.attempts == 1, "the lease ran out under a live attempt and it was taken again"
    assert "recovered" not in kinds


def _integrity_failure(chunk: str) -> dict[str, Any]:
    return {
        "state": "failed",
        "error": f"hash mismatch in chunk {chunk[:12]}…",
        "error_kind": "integrity",
        "error_chunk": chunk,
    }


def test_a_chunk_damaged_on_the_way_is_retried(tmp_path: Path) -> None:
    chunk: list[str] = []
    agent = FakeAgent(outcome=lambda pid: _integrity_failure(chunk[0]))

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            chunk.append(r.chunks[0])  # intact in the library
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, lambda j: j.instructions[0].attempts >= 2)

    (i,) = asyncio.run(scenario()).instructions
    assert i.state.value != "failed"
    assert i.error_kind == "transient"
    assert "damaged on the way" in (i.last_error or "")


def test_a_chunk_corrupt_in_the_library_stops_the_instruction(tmp_path: Path) -> None:
    chunk: list[str] = []
    agent = FakeAgent(outcome=lambda pid: _integrity_failure(chunk[0]))

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            victim = r.home.library.path(Digest.parse(r.chunks[0]))
            victim.chmod(0o644)
            victim.write_bytes(b"not the chunk")
            chunk.append(r.chunks[0])
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done)

    (i,) = asyncio.run(scenario()).instructions
    assert (i.state.value, i.attempts, i.error_kind) == ("failed", 1, "integrity")
    assert "is corrupt in the library" in (i.last_error or "")


def test_a_cancelled_instruction_stops_its_install_on_the_agent(tmp_path: Path) -> None:
    slow = FakeAgent(install_seconds=30.0)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=slow) as r:
            service = r.service()
            job_id = service.distribute(r.package_id, ["dp1"], time.time())
            asked: list[bool] = []

            def cancelled_there(job: Any) -> bool:
                if not asked and job.instructions[0].state.value == "sending" and slow.installs:
                    service.cancel_job(job_id, time.time())
                    asked.append(True)
                return bool(slow.cancels)

            await drive(r, job_id, cancelled_there)
            return r.package_id, r.job(job_id)

    package_id, job = asyncio.run(scenario())
    assert slow.cancels == [package_id]
    assert job.instructions[0].state.value == "cancelled"


def test_an_install_taken_over_by_another_worker_is_not_cancelled_on_the_agent(
    tmp_path: Path,
) -> None:
    slow = FakeAgent(install_seconds=30.0)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=slow) as r:
            service = r.service()
            job_id = service.distribute(r.package_id, ["dp1"], time.time())

            def taken_over(job: Any) -> bool:
                if job.instructions[0].state.value == "sending" and slow.installs:
                    # the lease runs out under this worker; another one claims it
                    later = time.time() + 60
                    service.recover_expired_leases(later)
                    return bool(service.claim_ready("other-worker", 600, 1, later))
                return False

            await drive(r, job_id, taken_over)
            await asyncio.sleep(3)  # longer than a lease renewal: the loss is noticed
            return r.job(job_id)

    job = asyncio.run(scenario())
    assert job.instructions[0].state.value == "sending"
    assert slow.cancels == [], "a worker that lost its lease cancelled the new holder's install"
