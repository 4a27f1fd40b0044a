"""Heartbeats that cost almost nothing: a heartbeat that changes nothing writes nothing, the
times are written in batches, and anything that matters is still recorded at once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from aiohttp import web

from packdist.core.tls import client_context
from packdist.http import new_session
from packdist.protocol.messages import Heartbeat
from packdist.protocol.site_api import SiteClient
from packdist.service import Service
from packdist.site.liveness import Liveness
from packdist.store.records import ServerRecord
from packdist.store.sqlite import SQLiteStore
from tests.harness import free_port
from tests.unit.store_conformance import T0, add_package, add_server

TRUSTS_NONE = client_context(None)  # plain HTTP here: no https:// URL is trusted

OFFLINE_AFTER = 7.0


def test_a_heartbeat_that_changes_nothing_writes_nothing_until_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "site.db"
    store = SQLiteStore(path)
    try:
        store.init_site("s", T0)
        for n in range(50):
            add_server(store, f"dp{n}")
        live = Liveness(OFFLINE_AFTER)
        beat = Heartbeat("boot-1", 1000, [])
        for n in range(50):  # the first heartbeat of each is recorded in full
            assert not live.quiet(f"dp{n}", beat, T0)
            Service(store).record_heartbeat(f"dp{n}", "boot-1", 1000, [], T0, OFFLINE_AFTER)
            live.recorded(f"dp{n}", beat, T0)

        watcher = sqlite3.connect(path)
        before = watcher.execute("PRAGMA data_version").fetchone()[0]
        for second in range(1, 4):  # three rounds of 50 "still here"
            for n in range(50):
                assert live.quiet(f"dp{n}", Heartbeat("boot-1", 900, []), T0 + second)
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == before, "a write"

        heard = live.take_dirty()
        assert len(heard) == 50 and {t for _, t, _ in heard} == {T0 + 3}
        store.touch_servers(heard)
        assert watcher.execute("PRAGMA data_version").fetchone()[0] != before
        servers = {s.name: s for s in store.list_servers()}
        assert servers["dp7"].last_seen == T0 + 3 and servers["dp7"].disk_free == 900
        assert live.take_dirty() == []  # written once
        watcher.close()
    finally:
        store.close()


def test_what_matters_in_a_heartbeat_is_never_held_back() -> None:
    live = Liveness(OFFLINE_AFTER)
    beat = Heartbeat("boot-1", 10, ["p1"])
    assert not live.quiet("dp1", beat, T0), "never heard of: recorded in full"
    live.recorded("dp1", beat, T0)
    assert live.quiet("dp1", beat, T0 + 2)
    assert not live.quiet("dp1", Heartbeat("boot-2", 10, ["p1"]), T0 + 4), "restarted"
    assert not live.quiet("dp1", Heartbeat("boot-1", 10, ["p1", "p2"]), T0 + 4), "new package"
    assert not live.quiet("dp1", Heartbeat("boot-1", 10, []), T0 + 4), "a package gone"
    assert not live.quiet("dp1", beat, T0 + 2 + OFFLINE_AFTER + 0.1), "silent: came back"
    live.forget("dp1")
    assert not live.quiet("dp1", beat, T0 + 5), "after a failed write: in full"


def test_a_package_the_site_recorded_installed_makes_no_write_when_the_server_lists_it() -> None:
    live = Liveness(offline_after=7.0)
    live.recorded("dp1", Heartbeat("boot-1", 10, ["p1"]), T0)
    assert not live.quiet("dp1", Heartbeat("boot-1", 10, ["p1", "p2"]), T0 + 1), "news"
    live.recorded("dp1", Heartbeat("boot-1", 10, ["p1"]), T0 + 1)
    live.installed("dp1", "p2")  # the despooler recorded the verified install
    assert live.quiet("dp1", Heartbeat("boot-1", 10, ["p1", "p2"]), T0 + 2)
    live.installed("dp9", "p2")  # never heard of here: its first heartbeat is recorded anyway
    assert not live.quiet("dp9", Heartbeat("boot-1", 10, ["p2"]), T0 + 2)


def test_a_batch_never_moves_a_time_back_nor_touches_a_removed_server(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "site.db")
    try:
        store.init_site("s", T0)
        add_package(store, "app")
        add_server(store, "dp1")
        add_server(store, "dp2")
        Service(store).record_heartbeat("dp1", "b", 5, [], T0 + 10, OFFLINE_AFTER)
        Service(store).remove_server("dp2", T0)
        store.touch_servers([("dp1", T0 + 5, 1), ("dp2", T0 + 20, 1)])
        (dp1,) = store.list_servers()
        assert (dp1.name, dp1.last_seen, dp1.disk_free) == ("dp1", T0 + 10, 5)
    finally:
        store.close()


def test_heartbeats_ride_one_kept_alive_connection() -> None:
    ports: list[int] = []

    async def heartbeat(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ports.append(peer[1])
        return web.json_response({"ok": True, "woken": 0})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/v1/agent/heartbeat", heartbeat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        session, fresh = (
            new_session(tls=TRUSTS_NONE),
            new_session(tls=TRUSTS_NONE, fresh_connections=True),
        )
        try:
            client = SiteClient(f"http://127.0.0.1:{port}", "pdt_x", session, fresh)
            for _ in range(5):
                await client.heartbeat(Heartbeat("b", None, []))
        finally:
            await session.close()
            await fresh.close()
            await runner.cleanup()

    asyncio.run(scenario())
    assert len(ports) == 5 and len(set(ports)) == 1, ports


def test_a_removed_servers_liveness_is_forgotten_with_its_token() -> None:
    live = Liveness(7.0)
    beat = Heartbeat("b", 1, [])
    record = ServerRecord("dp1", "http://dp1:8701", (), 0.0, last_seen=None, disk_free=None)
    live.remember_token("h1", record, now=0.0)
    live.recorded("dp1", beat, 0.0)
    live.recorded("dp2", beat, 0.0)
    assert live.servers() == 2
    assert live.tokens_checked(["h1"], set(), now=1.0) == ["h1"]  # dp1 was removed
    assert live.servers() == 1, "a removed server still counted in the fleet"
    assert live.last_heard("dp1") is None
    assert not live.quiet("dp1", beat, 2.0), "its next heartbeat must be recorded in full"


def test_a_server_that_stops_heartbeating_goes_offline_once_in_one_event(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "site.db")
    try:
        store.init_site("s", T0)
        live = Liveness(OFFLINE_AFTER)
        beat = Heartbeat("boot-1", 1000, [])
        for n in range(1000):
            add_server(store, f"dp{n}")
            Service(store).record_heartbeat(f"dp{n}", "boot-1", 1000, [], T0, OFFLINE_AFTER)
            live.recorded(f"dp{n}", beat, T0)
        later = T0 + OFFLINE_AFTER + 1
        for n in range(1, 1000):  # all but dp0 go on heartbeating
            assert live.quiet(f"dp{n}", beat, later - 1)
        store.touch_servers(live.take_dirty())
        assert live.went_silent(later) == ["dp0"]
        assert live.went_silent(later + 1) == []  # once per silence
        before = later - OFFLINE_AFTER
        assert Service(store).record_offline(["dp0"], before, later) == ["dp0"]
        assert Service(store).record_offline(["dp0"], before, later) == []  # another worker
        said = [e.message for e in store.recent_events(100) if e.server == "dp0"]
        assert said.count("server dp0 went offline: no heartbeat for 8s") == 1

        back = later + 5  # it comes back: recorded in full, and its next silence counts
        assert not live.quiet("dp0", beat, back)
        Service(store).record_heartbeat("dp0", "boot-1", 1000, [], back, OFFLINE_AFTER)
        live.recorded("dp0", beat, back)
        gone = back + OFFLINE_AFTER + 1
        assert "dp0" in live.went_silent(gone)
        assert Service(store).record_offline(["dp0"], gone - OFFLINE_AFTER, gone) == ["dp0"]
    finally:
        store.close()


def test_servers_whose_going_offline_could_not_be_written_are_judged_again_next_time() -> None:
    live = Liveness(OFFLINE_AFTER)
    beat = Heartbeat("boot-1", 1000, [])
    for name in ("dp1", "dp2", "dp3"):
        live.recorded(name, beat, T0)
    live.recorded("dp3", beat, T0 + 5)
    later = T0 + OFFLINE_AFTER + 1
    silent = live.went_silent(later)
    assert silent == ["dp1", "dp2"]
    live.recorded("dp2", beat, later + 0.5)  # heard meanwhile: not judged again
    live.silent_again(silent)  # the store refused the write
    assert live.went_silent(later + 1) == ["dp1"]
    assert live.went_silent(later + 2) == []  # once it is written, once per silence
