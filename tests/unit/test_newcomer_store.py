"""The store's side of what a newcomer could not see (issue 17, item 3), on SQLite and
PostgreSQL: site workers that say they run, servers marked offline once, tokens re-issued
and agents refused."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from packdist.service import Service
from packdist.service.fleet import REFUSAL_SHOWN, refusals_shown
from packdist.service.presence import RUNNING_WITHIN, site_presence
from packdist.store import Store, open_store
from tests.unit.store_conformance import T0, add_package, add_server


@pytest.fixture(params=("sqlite", "postgresql"))
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    folder = Path(tempfile.mkdtemp(prefix="packdist-newcomer-"))
    if request.param == "postgresql":
        made = open_store(request.getfixturevalue("pg_cluster").new_database())
    else:
        made = open_store(folder / "site.db")
    made.init_site("s", T0)
    yield made
    made.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_a_site_never_served_then_served_then_stopped_reads_so(store: Store) -> None:
    never = site_presence(store, T0)
    assert (never.running, never.message) == (
        False,
        "no site server has run yet: start `packdist site serve`",
    )
    store.site_worker_started("host:1", T0)
    assert site_presence(store, T0 + 1).running
    store.site_worker_seen("host:1", T0 + 10)
    assert site_presence(store, T0 + 10 + RUNNING_WITHIN - 1).running  # said lately
    killed = site_presence(store, T0 + 130)  # killed: its word grows old
    assert killed.message == "no site server has been seen for 2 min: start `packdist site serve`"
    store.site_worker_stopped("host:1", T0 + 20)
    assert site_presence(store, T0 + 21).message == (
        "no site server has been seen for 1s: start `packdist site serve`"
    )


def test_servers_are_marked_offline_once_until_they_come_back(store: Store) -> None:
    for name in ("dp1", "dp2"):
        add_server(store, name)
        Service(store).record_heartbeat(name, "b", None, [], T0, 7.0)
    Service(store).record_heartbeat("dp2", "b", None, [], T0 + 9, 7.0)
    assert Service(store).record_offline(["dp1", "dp2"], T0 + 2, T0 + 10) == ["dp1"]
    assert Service(store).record_offline(["dp1"], T0 + 2, T0 + 10) == []
    Service(store).record_heartbeat("dp1", "b", None, [], T0 + 20, 7.0)  # back
    assert Service(store).record_offline(["dp1"], T0 + 25, T0 + 30) == ["dp1"]
    said = [e.message for e in store.recent_events(50) if "went offline" in e.message]
    assert said == ["server dp1 went offline: no heartbeat for 10s"] * 2


def test_a_server_marked_offline_while_other_workers_heard_it_is_online_again_at_their_write(
    store: Store,
) -> None:
    add_server(store, "dp1")
    Service(store).record_heartbeat("dp1", "b", None, [], T0, 7.0)
    # a worker that heard nothing marks it offline; the worker that heard it writes late
    assert Service(store).record_offline(["dp1"], T0 + 2, T0 + 10) == ["dp1"]
    assert Service(store).record_quiet_heartbeats([("dp1", T0 + 11, None)], T0 + 12) == ["dp1"]
    assert Service(store).record_quiet_heartbeats([("dp1", T0 + 13, None)], T0 + 14) == []
    # so its next real silence is told again, not lost behind the first
    assert Service(store).record_offline(["dp1"], T0 + 20, T0 + 30) == ["dp1"]
    said = [e.message for e in store.recent_events(50) if e.server == "dp1"]
    assert said.count("server dp1 is online") == 2  # enrolled (its first heartbeat), then back
    assert said.count("server dp1 went offline: no heartbeat for 17s") == 1


def test_a_token_re_issued_voids_the_old_one_and_cancels_nothing(store: Store) -> None:
    add_server(store, "dp1")
    pkg = add_package(store, "app")
    job = Service(store).distribute(pkg.id, ["dp1"], T0)
    Service(store, "ann").reissue_token("dp1", "hash-new", T0 + 1)
    assert store.live_token_hashes(["hash-of-dp1", "hash-new"]) == {"hash-new"}
    assert store.get_job(job).instructions[0].state.value == "pending"
    with pytest.raises(Exception, match="no server named dpx"):
        Service(store).reissue_token("dpx", "h", T0)


def test_an_agent_refused_is_kept_for_the_server_it_is_taken_for(store: Store) -> None:
    add_server(store, "dp1")  # http://dp1.test:8700
    add_server(store, "dp2")
    service = Service(store)
    assert service.record_refused("dp2", "10.0.0.9", None, T0) == "dp2"  # the name it says
    assert service.record_refused("", "dp1.test", 8700, T0 + 1) == "dp1"  # dp1's URL
    assert service.record_refused("", "10.0.0.9", 8700, T0 + 2) is None  # nobody's address
    assert service.record_refused("dpx", "10.0.0.9", 9999, T0 + 2) is None  # nobody's
    assert service.record_refused("dp2", "10.0.0.9", None, T0 + 3) == "dp2"
    shown = refusals_shown(store, T0 + 4)
    assert list(shown) == ["dp1", "dp2"]
    assert shown["dp2"].startswith("dp2: an agent tried to enroll with a wrong token at ")
    events = [e.message for e in store.recent_events(50) if "wrong token" in e.message]
    assert len(events) == 2  # one per server while it goes on
    assert refusals_shown(store, T0 + 4 + REFUSAL_SHOWN) == {}
