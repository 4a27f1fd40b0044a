"""The store's reads for the dashboard's fleet pages (search, one server's history), the
same on every backend. Mixed into the conformance suite (``tests/unit/test_store.py``)."""

from __future__ import annotations

from packdist.service import Service
from packdist.store.base import PackageRecord, Store
from tests.unit.store_conformance import LEASE, T0, add_server


class FleetPagesConformance:
    def test_search_takes_the_text_literally_and_bounds_what_it_reads(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        for name in ("dp1", "dp10", "edge_1", "edgex1"):  # edge_1: "_" in a name
            add_server(store, name)
        job = Service(store).distribute(pkg.id, ["dp1"], T0)
        assert store.search("dp1").servers == ["dp1", "dp10"]
        assert store.search("e%1").servers == []
        assert store.search("e_1").servers == ["edge_1"]  # "_" is not a wildcard...
        assert store.search("ex1").servers == ["edgex1"]  # ...or "edgex1" would match it
        assert store.search("dp", limit=1).servers == ["dp1"]
        assert store.search(pkg.name).packages == [pkg.ref]
        assert store.search(job[:6]).jobs == [job]
        assert store.search("%").servers == []

    def test_a_servers_history_is_its_newest_instructions_and_events(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        add_server(store, "dp1")
        add_server(store, "dp2")
        service = Service(store)
        first = service.distribute(pkg.id, ["dp1", "dp2"], T0)
        (c, _) = service.claim_ready("w", LEASE, 100, T0 + 1)
        service.mark_installed(c.instruction_id, c.lease, T0 + 2)
        second = service.remove(pkg.id, ["dp1"], T0 + 3)
        rows = store.server_history("dp1", 10)
        assert [(r["job_id"], r["action"], r["name"]) for r in rows] == [
            (second, "remove", pkg.name),
            (first, "install", pkg.name),
        ]
        assert len(store.server_history("dp1", 1)) == 1
        events = store.server_events("dp1", 50)
        assert events and all(e.server == "dp1" for e in events)
        assert [e.id for e in events] == sorted(e.id for e in events)  # oldest first
