"""A job's trouble grouped by cause (site/causes.py) on a real store: servers failing the
same way are one group whatever their addresses; different kinds never merge."""

from __future__ import annotations

from pathlib import Path

from packdist.errors import ErrorKind
from packdist.service import Service
from packdist.site import views
from packdist.site.causes import job_causes, shared_words
from packdist.site.pages import job_content
from packdist.store.sqlite import SQLiteStore
from tests.unit.store_conformance import LEASE, T0, add_package, add_server


def test_what_names_the_server_is_set_aside_to_find_the_shared_cause() -> None:
    a = shared_words("dp3", "connection refused by https://10.0.0.3:8700; retry in 4.0s")
    b = shared_words("dp44", "connection refused by https://10.0.1.44:8700; retry in 16.0s")
    assert a == b == "connection refused by <server>; retry in Ns"
    assert shared_words("dp3", "dp3 answered 507: disk full") == "<server> answered 507: disk full"
    assert shared_words("dp3", "dp30 is a peer") == "dp30 is a peer"  # another server's name


def test_a_jobs_failures_are_counted_by_cause_largest_first(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "site.db")
    try:
        store.init_site("s", T0)
        pkg = add_package(store, "app")
        names = [f"dp{n}" for n in range(1, 8)]
        for name in names:
            add_server(store, name)
        service = Service(store)
        job = service.distribute(pkg.id, names, T0)
        for n, c in enumerate(service.claim_ready("w", LEASE, 100, T0), 1):
            if n <= 4:
                words, kind = f"connect timeout to https://10.0.0.{n}:8700", ErrorKind.REFUSED
            elif n <= 6:
                words, kind = f"{c.server} answered 507: disk full", ErrorKind.DISK
            else:
                service.mark_installed(c.instruction_id, c.lease, T0 + 1)
                continue
            service.mark_failed(c.instruction_id, c.lease, words, T0 + 1, kind)
        causes, troubled = job_causes(store, job)
        assert troubled == 6
        assert [(c.servers, c.kind, c.words) for c in causes] == [
            (4, "refused", "connect timeout to <server>"),
            (2, "disk", "<server> answered 507: disk full"),
        ]
        page = job_content(views.job_page(store, job, T0 + 2), T0 + 2)
        assert "4 servers" in page and "connect timeout to &lt;server&gt;" in page
        assert (
            'e.g. <a href="/servers/dp1">dp1</a>: connect timeout to https://10.0.0.1:8700' in page
        )
    finally:
        store.close()
