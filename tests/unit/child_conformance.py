"""Child sites in the store, and what the parent reads of their reports: the same on every
backend. Mixed into the conformance suite (``tests/unit/test_store.py``)."""

from __future__ import annotations

import pytest

from packdist.errors import AlreadyExists
from packdist.protocol.hierarchy import ChildReport, ReportedServer
from packdist.service import Service
from packdist.service.hierarchy import CHILD_OFFLINE_AFTER
from packdist.store.base import PackageRecord, Store
from tests.unit.store_conformance import T0, add_server


def _report(*servers: ReportedServer) -> ChildReport:
    return ChildReport("branch", servers)


class ChildSitesConformance:
    def test_a_child_site_is_found_by_its_token_and_named_once(self, store: Store) -> None:
        Service(store, "ops").add_child("br", "https://br.test:8700", "hash-br", T0)
        child = store.child_site_by_token_hash("hash-br")
        assert child is not None and (child.name, child.url) == ("br", "https://br.test:8700")
        assert child.last_seen is None
        assert store.child_site_by_token_hash("hash-other") is None
        with pytest.raises(AlreadyExists, match="child site br already exists"):
            Service(store).add_child("br", "https://elsewhere.test:8700", "hash-2", T0)
        assert [c.name for c in store.list_child_sites()] == ["br"]
        assert "child site br added (https://br.test:8700) by ops" in [
            e.message for e in store.recent_events(10)
        ]

    def test_a_report_shows_the_childs_servers_on_the_parents_clock(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        service = Service(store)
        service.add_child("br", "https://br.test:8700", "hash-br", T0)
        child = store.child_site_by_token_hash("hash-br")
        assert child is not None
        report = _report(
            ReportedServer("dp1", True, 2.0, 5_000, (pkg.id,)),
            ReportedServer("gc/dp9", False, None, None, ()),
        )
        service.record_child_report(child, report, T0 + 10)
        (view,) = service.child_sites(T0 + 11)
        assert (view.state, view.site_name) == ("online", "branch")
        assert [(s.name, s.online, s.last_seen) for s in view.servers] == [
            ("br/dp1", True, T0 + 8),
            ("br/gc/dp9", False, None),
        ]
        assert view.servers[0].installed == (pkg.id,)
        # a child that stops reporting is offline, and so are its servers, whatever it said
        (later,) = service.child_sites(T0 + 10 + CHILD_OFFLINE_AFTER)
        assert later.state == "offline"
        assert not any(s.online for s in later.servers)

    def test_a_child_that_returns_is_told_in_the_events(self, store: Store) -> None:
        service = Service(store)
        service.add_child("br", "https://br.test:8700", "hash-br", T0)
        for at in (T0 + 1, T0 + 2, T0 + 500):
            child = store.child_site_by_token_hash("hash-br")
            assert child is not None
            service.record_child_report(child, _report(), at)
        words = [e.message for e in store.recent_events(10)]
        assert "child site br (branch) reported for the first time: 0 servers" in words
        assert "child site br is back after 498s: 0 servers" in words
        assert sum("child site br" in w for w in words) == 3  # added, first, back: no more

    def test_a_childs_report_lists_what_each_server_holds_verified(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        add_server(store, "dp1")
        add_server(store, "dp2")
        store.add_holding("dp1", pkg.id, T0)
        store.add_holding("dp2", pkg.id, T0)
        store.mark_corrupt("dp2", pkg.id, "chunk ab12… does not match", T0)
        assert store.verified_holdings() == {"dp1": [pkg.id]}
