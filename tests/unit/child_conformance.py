"""Child sites in the store, and what the parent reads of their reports: the same on every
backend. Mixed into the conformance suite (``tests/unit/test_store.py``)."""

from __future__ import annotations

import pytest

from packdist.errors import AlreadyExists, ErrorKind
from packdist.protocol.hierarchy import ChildReport, ReportedServer
from packdist.retry import RetryPolicy
from packdist.service import Service
from packdist.service.hierarchy import CHILD_OFFLINE_AFTER
from packdist.states import InstructionState as S
from packdist.store.base import PackageRecord, Store
from packdist.store.records import ANY_SERVER, OWN_SERVERS, ChildSiteRecord
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

    def test_a_server_its_child_judges_online_is_online_here_between_its_heartbeats(
        self, store: Store
    ) -> None:
        """A large child's agents heartbeat less often than a small site's bound; the child
        knows its pace and says which are online: that judgment holds here too."""
        service = Service(store)
        service.add_child("br", "https://br.test:8700", "hash-br", T0)
        report = _report(
            ReportedServer("dp1", True, 40.0, None, ()),  # heard 40 s ago, within br's pace
            ReportedServer("dp2", False, 40.0, None, ()),
        )
        service.record_child_report(_child(store), report, T0 + 100)
        (view,) = service.child_sites(T0 + 101)
        assert [(s.name, s.online) for s in view.servers] == [("br/dp1", True), ("br/dp2", False)]
        assert [s.last_seen for s in view.servers] == [T0 + 97, T0 + 60]
        # and the despooler counts dp1 as heard from: its work is not held back as silent
        (dp1,) = [s for s in store.list_servers() if s.name == "br/dp1"]
        assert dp1.last_seen == T0 + 97

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

    def test_a_childs_servers_are_servers_here_that_jobs_can_name(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        service = Service(store)
        service.add_child("br", "https://br.test:8700", "hash-br", T0)
        child = _child(store)
        service.record_child_report(
            child, _report(ReportedServer("dp1", True, 1.0, 7, (pkg.id, "cd" * 32))), T0 + 5
        )
        assert [s.name for s in store.list_servers()] == ["br/dp1"]
        (row,) = store.list_servers()
        assert (row.url, row.last_seen, row.disk_free) == ("https://br.test:8700", T0 + 4, 7)
        assert store.holdings("br/dp1") == {pkg.id}  # a package unknown here is left out
        job = service.distribute(pkg.id, ["br/dp1"], T0 + 6)
        assert [i.server for i in store.get_job(job).instructions] == ["br/dp1"]
        # a child's server is never offered as a peer to this site's own servers
        assert store.swarm(pkg.id, T0 + 6) == []

    def test_a_server_the_child_no_longer_reports_is_removed_with_its_work(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        service = Service(store)
        service.add_child("br", "https://br.test:8700", "hash-br", T0)
        service.record_child_report(
            _child(store), _report(ReportedServer("dp1", True, 0.0, None, ())), T0
        )
        job = service.distribute(pkg.id, ["br/dp1"], T0 + 1)
        service.record_child_report(_child(store), _report(), T0 + 3)
        assert store.list_servers() == []
        (i,) = store.get_job(job).instructions
        assert i.state is S.CANCELLED
        assert i.last_error == "server removed at child site br"
        # reported again later: enrolled again, with nothing of before
        service.record_child_report(
            _child(store), _report(ReportedServer("dp1", True, 0.0, None, ())), T0 + 9
        )
        assert [s.name for s in store.list_servers()] == ["br/dp1"]

    def test_a_report_that_a_server_holds_the_package_wakes_its_retrying_instruction(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        service = Service(store)
        service.add_child("br", "https://br.test:8700", "hash-br", T0)
        service.record_child_report(
            _child(store), _report(ReportedServer("dp1", True, 0.0, None, ())), T0
        )
        service.distribute(pkg.id, ["br/dp1"], T0)
        (c,) = service.claim_ready("w", 30, 8, T0 + 1)
        service.record_failure(
            c,
            "at br: dp1 unreachable; br retries it",
            ErrorKind.TRANSIENT,
            RetryPolicy(initial=60),
            T0 + 2,
        )
        assert service.claim_ready("w", 30, 8, T0 + 3) == []
        woken = service.record_child_report(
            _child(store), _report(ReportedServer("dp1", True, 0.0, None, (pkg.id,))), T0 + 3
        )
        assert woken == 1
        assert [x.server for x in service.claim_ready("w", 30, 8, T0 + 3)] == ["br/dp1"]

    def test_a_claim_takes_this_sites_own_servers_or_one_childs_as_asked(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        service = Service(store)
        add_server(store, "dp0")
        for name in ("br", "ws"):
            service.add_child(name, f"https://{name}.test:8700", f"hash-{name}", T0)
            child = store.child_site(name)
            assert child is not None
            service.record_child_report(
                child,
                _report(*(ReportedServer(s, True, 0.0, None, ()) for s in ("dp1", "dp2"))),
                T0,
            )
        assert store.child_site_names() == ["br", "ws"]
        service.distribute(pkg.id, ["br/dp1", "br/dp2", "dp0", "ws/dp1"], T0)
        assert [c.server for c in service.claim_ready("w", 30, 8, T0, None, "br")] == [
            "br/dp1",
            "br/dp2",
        ]
        assert [c.server for c in service.claim_ready("w", 30, 8, T0, None, OWN_SERVERS)] == ["dp0"]
        assert [c.server for c in service.claim_ready("w", 30, 8, T0, None, ANY_SERVER)] == [
            "ws/dp1"
        ]


def _child(store: Store) -> ChildSiteRecord:
    child = store.child_site("br")
    assert child is not None
    return child
