"""The site directs the heartbeat interval and sheds heartbeats under overload: a real site
server on a real port, its real store, agents' calls over real HTTP (``SiteClient``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from packdist.auth import hash_token, new_token
from packdist.config import Settings
from packdist.core.tls import client_context
from packdist.errors import Overloaded
from packdist.http import new_session
from packdist.protocol.messages import Heartbeat
from packdist.protocol.site_api import SiteClient
from packdist.service import Service
from packdist.site.home import SiteHome
from packdist.site.server import SiteServer
from tests import harness as h

TRUSTS_NONE = client_context(None)  # plain HTTP here: no https:// URL is trusted


def _site_with(tmp_path: Path, servers: int) -> tuple[SiteServer, str]:
    """A site home with ``servers`` servers (dp0 first); the server and dp0's token."""
    site = h.make_site(tmp_path)
    home = SiteHome.open(site.home)
    store = home.store()
    tokens = [new_token() for _ in range(servers)]
    now = time.time()
    try:
        with store.transaction():
            for i, token in enumerate(tokens):
                Service(store).add_server(
                    f"dp{i}", "http://127.0.0.1:9", hash_token(token), [], {}, now
                )
    finally:
        store.close()
    # plain HTTP: these measure the site's heartbeat handling, not TLS handshakes
    return SiteServer(home, settings=Settings(plain_http=True)), tokens[0]


async def _serving(server: SiteServer) -> tuple[asyncio.Task[None], str]:
    port = h.free_port()
    task = asyncio.create_task(server.run(f"127.0.0.1:{port}"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        await asyncio.sleep(0.1)
        if server.site_name and server._despooler is not None:
            try:
                await asyncio.to_thread(h.http_get, f"{url}/healthz")
                break
            except OSError:
                pass
    return task, url


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_the_interval_in_the_site_answers_follows_the_fleet_size(tmp_path: Path) -> None:
    server, token = _site_with(tmp_path, 2_500)

    async def run() -> tuple[float, float]:
        task, url = await _serving(server)
        async with (
            new_session(tls=TRUSTS_NONE) as session,
            new_session(tls=TRUSTS_NONE, fresh_connections=True) as fresh,
        ):
            client = SiteClient(url, token, session, fresh)
            try:
                hello = await client.hello()
                beat = await client.heartbeat(Heartbeat("boot", 1, []))
            finally:
                await _stop(task)
        return hello["interval"], beat["interval"]

    assert asyncio.run(run()) == (2.5, 2.5), "2,500 servers at 1,000 heartbeats/s"


def test_shed_heartbeats_never_make_a_server_look_offline_nor_come_back(tmp_path: Path) -> None:
    server, token = _site_with(tmp_path, 1)

    async def run() -> int:
        task, url = await _serving(server)
        async with (
            new_session(tls=TRUSTS_NONE) as session,
            new_session(tls=TRUSTS_NONE, fresh_connections=True) as fresh,
        ):
            client = SiteClient(url, token, session, fresh)
            try:
                await client.hello()
                await client.heartbeat(Heartbeat("boot", 1, []))  # dp0 is online
                server.admission.rate_limit = 0  # overloaded: every heartbeat shed
                shed = 0
                started = time.monotonic()
                silence = server.cadence.offline_after() + 3
                while time.monotonic() - started < silence:  # longer than "offline"
                    try:
                        await client.heartbeat(Heartbeat("boot", 1, []))
                    except Overloaded as exc:
                        assert exc.retry_after >= 1
                        shed += 1
                    await asyncio.sleep(1.0)
                server.admission.rate_limit = 1000
                answer = await client.heartbeat(Heartbeat("boot", 1, []))
                assert answer["woken"] == 0
                await asyncio.sleep(0.1)
            finally:
                await _stop(task)
        return shed

    assert asyncio.run(run()) >= 5
    store = SiteHome.open(server.home.root).store()
    try:
        events = [e.message for e in store.events() if e.server == "dp0"]
        seen = store.server("dp0")
    finally:
        store.close()
    assert sum("is online" in m for m in events) == 1, events
    assert seen is not None and seen.last_seen is not None
    assert time.time() - seen.last_seen < 5, "shed heartbeats left it silent in the store"


def test_a_removed_servers_token_is_refused_within_seconds_while_others_cost_no_lookup(
    tmp_path: Path,
) -> None:
    from packdist.errors import AuthError
    from packdist.site.liveness import TOKEN_CHECK_EVERY, TOKEN_TTL

    server, token = _site_with(tmp_path, 1)
    site_home = server.home

    async def run() -> float:
        task, url = await _serving(server)
        async with (
            new_session(tls=TRUSTS_NONE) as session,
            new_session(tls=TRUSTS_NONE, fresh_connections=True) as fresh,
        ):
            client = SiteClient(url, token, session, fresh)
            try:
                await client.hello()
                await client.heartbeat(Heartbeat("boot", 1, []))  # the token is kept now
                store = site_home.store()  # the operator removes dp0 (another process)
                try:
                    Service(store).remove_server("dp0", time.time())
                finally:
                    store.close()
                removed = time.monotonic()
                while time.monotonic() - removed < TOKEN_TTL:
                    try:
                        await client.heartbeat(Heartbeat("boot", 1, []))
                    except AuthError:
                        return time.monotonic() - removed
                    await asyncio.sleep(0.5)
                return float("inf")
            finally:
                await _stop(task)

    refused_after = asyncio.run(run())
    # a loose bound: the check runs every few seconds, the kept token's TTL is a minute
    assert refused_after < TOKEN_CHECK_EVERY + 10, f"still let in {refused_after:.0f}s later"


def test_heartbeats_give_up_kept_connections_when_descriptors_run_short(tmp_path: Path) -> None:
    server, token = _site_with(tmp_path, 1)

    async def run() -> tuple[str | None, str | None]:
        task, url = await _serving(server)
        headers = {"Authorization": f"Bearer {token}"}
        body = Heartbeat("boot", 1, []).to_json()
        try:
            async with new_session(tls=TRUSTS_NONE) as session:
                async with session.post(
                    f"{url}/v1/agent/heartbeat", json=body, headers=headers
                ) as r:
                    kept = r.headers.get("Connection")
                server.beats.files_limit = 1  # as if every descriptor but one were taken
                async with session.post(
                    f"{url}/v1/agent/heartbeat", json=body, headers=headers
                ) as r:
                    closed = r.headers.get("Connection")
        finally:
            await _stop(task)
        return kept, closed

    kept, closed = asyncio.run(run())
    assert kept != "close" and closed == "close"
