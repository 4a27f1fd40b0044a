"""The despooler's slots shared out (site/slot_shares.py), against a real store: servers not
heard from, each child site and the child sites together hold no more than their share, so
a slow link or a hung server never takes the slots the others need."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from packdist.protocol.hierarchy import ChildReport, ReportedServer
from packdist.service import Service
from packdist.site.slot_shares import SlotShares
from packdist.store import Store, open_store
from packdist.store.base import Claim, PackageRecord
from tests.unit.store_conformance import T0, add_package, add_server

HEARD = T0 + 100.0  # when the servers below were last heard from (now is a little later)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(tmp_path / "site.db")
    store.init_site("s", T0)
    yield store
    store.close()


@pytest.fixture
def pkg(store: Store) -> PackageRecord:
    return add_package(store, "app", "1.0")


def _child(store: Store, name: str, servers: int) -> list[str]:
    service = Service(store)
    service.add_child(name, f"https://{name}.test:8700", f"hash-{name}", T0)
    child = store.child_site(name)
    assert child is not None
    reported = [ReportedServer(f"dp{n}", True, 0.0, None, ()) for n in range(servers)]
    service.record_child_report(child, ChildReport(name, tuple(reported)), HEARD)
    return [f"{name}/dp{n}" for n in range(servers)]


def _claim(shares: SlotShares, store: Store, free: int, now: float = HEARD + 1) -> list[Claim]:
    claims = shares.claim(Service(store), "w:1", 30.0, free, now)
    for c, silent in claims:
        shares.started(c, silent)
    return [c for c, _ in claims]


def _servers(claims: list[Claim]) -> list[str]:
    return sorted(c.server for c in claims)


def test_a_child_with_many_servers_waiting_takes_only_its_quarter_of_the_slots(
    store: Store, pkg: PackageRecord
) -> None:
    slow = _child(store, "slow", 6)
    Service(store).distribute(pkg.id, slow, T0)
    shares = SlotShares(8, lambda: 60.0)
    claims = _claim(shares, store, free=8)
    assert _servers(claims) == ["slow/dp0", "slow/dp1"]  # a quarter of 8
    assert shares.held_back  # the rest is due and waits: the despooler does not spin on it
    # another child's work, due later, still finds a slot at once
    fast = _child(store, "fast", 1)
    Service(store).distribute(pkg.id, fast, T0 + 1)
    assert _servers(_claim(shares, store, free=6)) == ["fast/dp0"]
    # one of slow's attempts ends: the next of its servers takes its place, and no more
    shares.ended(claims[0])
    assert [c.server for c in _claim(shares, store, free=5)] == ["slow/dp2"]


def test_this_sites_own_servers_come_before_the_children_and_are_not_capped_by_them(
    store: Store, pkg: PackageRecord
) -> None:
    behind = _child(store, "br", 4)
    own = [f"own{n}" for n in range(5)]
    for name in own:
        add_server(store, name)
        Service(store).record_heartbeat(name, "boot", None, [], HEARD, 7.0)
    Service(store).distribute(pkg.id, [*behind, *own], T0)
    shares = SlotShares(8, lambda: 60.0)
    claims = _claim(shares, store, free=8)
    assert _servers(claims) == sorted([*own, "br/dp0", "br/dp1"])


def test_many_children_together_hold_at_most_half_the_slots(
    store: Store, pkg: PackageRecord
) -> None:
    targets = [s for name in ("a", "b", "c", "d", "e") for s in _child(store, name, 3)]
    Service(store).distribute(pkg.id, targets, T0)
    shares = SlotShares(16, lambda: 60.0)
    claims = _claim(shares, store, free=16)
    per_child = {c.server.split("/")[0] for c in claims}
    assert len(claims) == 5 and per_child == {"a", "b", "c", "d", "e"}  # one each: 8 // 5
    assert shares.held_back


def test_servers_not_heard_from_take_a_quarter_and_the_healthy_ones_the_rest(
    store: Store, pkg: PackageRecord
) -> None:
    hung = [f"hung{n}" for n in range(6)]
    for name in [*hung, "ok"]:
        add_server(store, name)
    Service(store).record_heartbeat("ok", "boot", None, [], HEARD, 7.0)
    Service(store).distribute(pkg.id, [*hung, "ok"], T0)
    shares = SlotShares(8, lambda: 60.0)
    claims = _claim(shares, store, free=8)
    assert _servers(claims) == ["hung0", "hung1", "ok"]
    assert shares.silent == {c.instruction_id for c in claims if c.server != "ok"}
    assert shares.held_back
