"""Clients in the store, and the use cases above them (add, remove, a sources request, a
fetch reported): the same on every backend. Mixed into the conformance suite
(``tests/unit/test_store.py``)."""

from __future__ import annotations

import pytest

from packdist.errors import AlreadyExists, NotFound
from packdist.protocol.client_api import FetchReport
from packdist.service import Service
from packdist.store.base import Store
from packdist.store.clients import SITE_SOURCE
from tests.unit.store_conformance import T0, add_package, add_server


class ClientsConformance:
    def test_a_client_is_found_by_its_token_hash_until_it_is_removed(self, store: Store) -> None:
        service = Service(store, "alice")
        service.add_client("c1", "hash-c1", {"site": "berlin"}, T0)
        found = store.client_by_token_hash("hash-c1")
        assert found is not None and found.name == "c1" and found.label("site") == "berlin"
        with pytest.raises(AlreadyExists):
            service.add_client("c1", "hash-other", {}, T0)
        assert [c.name for c in store.list_clients()] == ["c1"]
        service.remove_client("c1", T0 + 1)
        assert store.client_by_token_hash("hash-c1") is None
        with pytest.raises(NotFound):
            service.remove_client("c1", T0 + 2)
        words = [e.message for e in store.events() if e.kind == "client"]
        assert words == ["client c1 added (site=berlin) by alice", "client c1 removed by alice"]

    def test_sources_requests_and_reported_fetches_are_counted_by_package_and_source(
        self, store: Store
    ) -> None:
        package = add_package(store, "app", "2", content=b"x" * 4 * 2**20)
        service = Service(store)
        service.add_client("c1", "hash-c1", {}, T0)
        client = store.client_by_token_hash("hash-c1")
        assert client is not None
        for n in range(2):
            assert service.client_asks(client, "app", "2", T0 + n).id == package.id
        with pytest.raises(NotFound):
            service.client_asks(client, "app", "3", T0)
        add_server(store, "dp1")
        told = {"dp1": 3 * 2**20, "site": 2**20, "nobody": 5 * 2**20}
        words = service.client_fetched(client, FetchReport(package.id, told, 0, 1.5), T0 + 5)
        assert words == "client c1 fetched app@2 (3.0 MiB from dp1, 1.0 MiB from site)"
        totals = {(t.source, t.ref): t for t in store.client_totals()}
        own = totals[SITE_SOURCE, "app@2"]
        assert (own.requests, own.fetches) == (2, 1)
        assert totals["dp1", "app@2"].bytes == 3 * 2**20
        assert totals["site", "app@2"].bytes == 2**20
        assert ("nobody", "app@2") not in totals  # not one of the site's servers
        service.client_fetched(client, FetchReport(package.id, {"dp1": 2**62}, 0, 1.0), T0 + 6)
        dp1 = {(t.source, t.ref): t for t in store.client_totals()}["dp1", "app@2"]
        assert dp1.bytes == 3 * 2**20 + package.size  # a lie counts as the package at most
        seen = store.client_by_token_hash("hash-c1")
        assert seen is not None and seen.last_fetch == T0 + 1
