"""The store's reads for the dashboard's fleet pages (search, one server's history), the
same on every backend. Mixed into the conformance suite (``tests/unit/test_store.py``)."""

from __future__ import annotations

import threading
import time

import pytest

from packdist.service import Service
from packdist.store.base import PackageRecord, Store
from tests.unit.store_conformance import LEASE, T0, Backend, add_server


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

    def test_a_cancelled_instruction_keeps_what_cancelled_it_apart_from_its_last_error(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        for name in ("dp1", "dp2", "dp3"):
            add_server(store, name)
        job = Service(store).distribute(pkg.id, ["dp1", "dp2", "dp3"], T0)
        claims = {c.server: c for c in Service(store).claim_ready("w", LEASE, 10, T0 + 1)}
        Service(store).schedule_retry(
            claims["dp1"].instruction_id, claims["dp1"].lease, "connect timeout", T0 + 60, T0 + 2
        )
        Service(store).remove_server("dp3", T0 + 3)
        Service(store, "ann").cancel_job(job, T0 + 4)
        shown = {i.server: i for i in store.get_job(job).instructions}
        assert (shown["dp1"].last_error, shown["dp1"].cancel_cause) == (
            "connect timeout",  # the failure before the cancel, still there to read
            "cancelled by operator ann",
        )
        assert shown["dp2"].cancel_cause == "cancelled by operator ann"
        assert shown["dp3"].cancel_cause == "server removed"
        removal = Service(store).remove(pkg.id, ["dp1"], T0 + 5)
        Service(store).retry_job(job, T0 + 6)  # the install again: the removal superseded
        shown = {i.server: i for i in store.get_job(job).instructions}
        assert shown["dp1"].cancel_cause is None  # pending again: no cause of a cancel
        (dp1,) = store.get_job(removal).instructions
        assert dp1.cancel_cause == f"superseded by install job {job}"

    def test_no_event_cancels_an_instruction_without_saying_what_cancelled_it(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        add_server(store, "dp1")
        job = Service(store).distribute(pkg.id, ["dp1"], T0)
        (i,) = store.get_job(job).instructions
        for event in ("cancel", "server_removed", "supersede"):
            with pytest.raises(ValueError, match="what cancelled it"):
                store.apply(event, [i.id], T0 + 1, finished_at=T0 + 1)
        assert store.get_job(job).instructions[0].state.value == "pending"

    def test_two_workers_refusing_the_same_agent_at_once_write_one_event(
        self, backend: Backend, store: Store
    ) -> None:
        add_server(store, "dp1")
        other = backend.open()  # a second site worker: its own connection
        errors: list[BaseException] = []

        def refuse() -> None:
            try:
                Service(other).record_refused("dp1", "10.0.0.9", None, T0 + 0.5)
            except BaseException as exc:  # seen by the test, not lost in the thread
                errors.append(exc)

        second = threading.Thread(target=refuse)
        with store.transaction():  # the first worker's refusal, not committed yet...
            assert Service(store).record_refused("dp1", "10.0.0.9", None, T0) == "dp1"
            second.start()  # ...when the second worker's comes
            time.sleep(0.3)
        second.join(10)
        assert not second.is_alive() and errors == []
        said = [e.message for e in store.recent_events(50) if "wrong token" in e.message]
        assert len(said) == 1
