"""A site for driving the despooler directly: a real store and site home, and fake agents
that answer the agent protocol over real HTTP the way a test asks.

Each :class:`FakeAgent` records what it was asked (install bodies, status questions, cancels,
removals), so a test checks what a server was told, not how the despooler got there.
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

from aiohttp import web

from packdist.auth import bearer, check_site_assertion
from packdist.core.signing import VerifyKey
from packdist.core.tls import client_context
from packdist.despooler import Despooler, PeerSettings, StoreRunner
from packdist.http import new_session
from packdist.retry import RetryPolicy
from packdist.service import Service
from packdist.site.home import SiteHome
from packdist.site.importer import import_tree
from packdist.store.core import Store
from tests.harness import free_port

TRUSTS_NONE = client_context(None)  # plain HTTP here: no https:// URL is trusted

PACKAGE = web.AppKey("package_id", str)
SITE_KEY = web.AppKey("site_key", VerifyKey)
SERVER = web.AppKey("server", str)
# How long a scenario may take to reach its end. Each takes a few seconds; `make mutation`
# lowers the bound, since a mutant that never gets there would hold its run this long.
DRIVE_TIMEOUT = float(os.environ.get("PACKDIST_DRIVE_TIMEOUT", "20"))
#: the retry policy of every scenario: again after 50 ms, every time
QUICK_RETRY = RetryPolicy(initial=0.05, factor=1.0, cap=0.05, jitter=0.0)


def installed(pid: str) -> dict[str, Any]:
    return {"state": "installed", "package_id": pid}


@dataclass
class FakeAgent:
    """An agent that installs in ``install_seconds`` and then reports ``outcome``; removes
    answering ``removal``; and forgets its install (answers 404, as after a restart) for
    the first ``forget`` status questions."""

    install_seconds: float = 0.0
    outcome: Callable[[str], dict[str, Any]] = installed
    removal: Callable[[], dict[str, Any]] = lambda: {"state": "removed"}
    forget: int = 0
    removal_seconds: float = 0.0  # how long a removal takes before the agent answers
    installs: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)  # each install request's body
    removals: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)
    stalled: bool = False  # answers "installing" with no progress, forever
    refused: list[str] = field(default_factory=list)  # credentials refused, and why
    hangs: bool = False  # takes an install request and never answers (a hung server)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set when the test ends

    @web.middleware
    async def check_credential(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """As the real agent: every call carries a site credential addressed to this
        server, for this method and path."""
        try:
            check_site_assertion(
                bearer(request.headers.get("Authorization")),
                request.app[SITE_KEY],
                request.app[SERVER],
                method=request.method,
                path=request.rel_url.raw_path,
            )
        except Exception as exc:
            self.refused.append(str(exc))
            return web.json_response({"error": str(exc), "error_kind": "auth"}, status=401)
        return await handler(request)

    def _status(self, pid: str) -> dict[str, Any]:
        if pid in self.cancels:
            return {"state": "cancelled", "package_id": pid}
        elapsed = time.monotonic() - self.started[pid]
        if self.stalled:
            return {"state": "installing", "package_id": pid, "progress": 5}
        if elapsed < self.install_seconds:  # progress moves: the despooler sees it alive
            return {"state": "installing", "package_id": pid, "progress": int(elapsed * 100)}
        return self.outcome(pid)

    async def install(self, request: web.Request) -> web.Response:
        pid = request.app[PACKAGE]
        self.installs.append(pid)
        self.bodies.append(await request.json())
        if self.hangs:  # until the test ends (then answers nobody)
            await self.released.wait()
        self.started.setdefault(pid, time.monotonic())
        return web.json_response(self._status(pid), status=202)

    async def status(self, request: web.Request) -> web.Response:
        pid = request.match_info["package_id"]
        if self.forget > 0:
            self.forget -= 1
            return web.json_response({"error": "no such install"}, status=404)
        wait = float(request.query.get("wait", "0"))
        await asyncio.sleep(min(wait, 0.2))
        return web.json_response(self._status(pid))

    async def cancel(self, request: web.Request) -> web.Response:
        pid = request.match_info["package_id"]
        self.cancels.append(pid)
        return web.json_response({"state": "cancelled", "package_id": pid})

    async def remove(self, request: web.Request) -> web.Response:
        self.removals.append(await request.json())
        await asyncio.sleep(self.removal_seconds)
        return web.json_response(self.removal())


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
            app = web.Application(middlewares=[agent.check_credential])
            app[PACKAGE] = record.id
            app[SITE_KEY] = home.signing_key().public
            app[SERVER] = name
            app.router.add_post("/v1/install", agent.install)
            app.router.add_get("/v1/installs/{package_id}", agent.status)
            app.router.add_post("/v1/installs/{package_id}/cancel", agent.cancel)
            app.router.add_post("/v1/remove", agent.remove)
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
        for agent in agents.values():
            agent.released.set()
        for r in runners:
            await r.cleanup()
        store.close()


async def drive(
    rig: Rig,
    job_id: str,
    until: Callable[[Any], bool],
    lease: float = 10.0,
    timeout: float = DRIVE_TIMEOUT,
    with_library: bool = True,
    peers: PeerSettings | None = None,
    max_in_flight: int = 64,
) -> Any:
    """Run a despooler on the rig's site until ``until(job)`` holds (or ``timeout``), then
    stop it as ``site serve`` does (its attempts under way handed back)."""
    runner = StoreRunner(rig.home.store())
    session = new_session(tls=TRUSTS_NONE)
    despooler = Despooler(
        runner,
        rig.home.signing_key(),
        session,
        policy=QUICK_RETRY,
        max_in_flight=max_in_flight,
        lease=lease,
        peers=peers,
        library=rig.home.library if with_library else None,
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
    return all(
        i.state.value in ("installed", "removed", "failed", "cancelled") for i in job.instructions
    )
