"""Active versions in the store, and the use cases above them (activate, rollback, what a
heartbeat reports): the same on every backend. Mixed into the conformance suite
(``tests/unit/test_store.py``)."""

from __future__ import annotations

import pytest

from packdist.errors import NoTargets, NotFound, UserError
from packdist.service import Service
from packdist.service.activation import ACTIVATE
from packdist.store.base import PackageRecord, Store
from tests.unit.store_conformance import LEASE, T0, add_package, add_server


def _activated(store: Store, job_id: str, now: float) -> None:
    """Drive the job's instructions as the despooler does once the agents confirmed."""
    service = Service(store)
    for c in service.claim_ready("w", LEASE, 100, now):
        assert c.job_id == job_id and c.options.get(ACTIVATE) is True
        service.mark_activated(c.instruction_id, c.lease, now + 1)


class ActivationConformance:
    def test_an_activation_records_the_active_version_and_the_one_before(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        v2 = add_package(store, pkg.name, "2.0")
        add_server(store, "dp1")
        service = Service(store, "ops")
        _activated(store, service.activate(pkg.id, ["dp1"], T0), T0)
        _activated(store, service.activate(v2.id, ["dp1"], T0 + 10), T0 + 10)
        active = store.active_versions("dp1")[pkg.name]
        assert (active.package_id, active.previous_id) == (v2.id, pkg.id)
        words = [e.message for e in store.recent_events(20)]
        assert f"{v2.ref} active on dp1 (was {pkg.version})" in words
        assert f"{pkg.ref} active on dp1" in words
        assert store.get_job(service.activate(pkg.id, ["dp1"], T0 + 20)).options == {ACTIVATE: True}

    def test_a_rollback_makes_one_job_per_version_to_go_back_to_and_skips_the_rest(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        v2, v3 = (add_package(store, pkg.name, v) for v in ("2.0", "3.0"))
        for name in ("dp1", "dp2", "dp3", "dp4"):
            add_server(store, name)
        service = Service(store)
        for version, servers, at in ((pkg, ["dp1", "dp3"], T0), (v2, ["dp2"], T0 + 5)):
            _activated(store, service.activate(version.id, servers, at), at)
        _activated(store, service.activate(v3.id, ["dp1", "dp2", "dp3"], T0 + 10), T0 + 10)
        store.set_active("dp4", pkg.name, v3.id, T0 + 11)  # active, nothing before it
        done = Service(store, "ops").rollback(pkg.name, ["dp1", "dp2", "dp3", "dp4"], T0 + 20)
        back = {ref: sorted(servers) for _, ref, servers in done.jobs}
        assert back == {pkg.ref: ["dp1", "dp3"], v2.ref: ["dp2"]}
        assert done.skipped == {"dp4": f"no earlier version of {pkg.name} was active there"}
        for job_id, _, _ in done.jobs:
            assert store.get_job(job_id).options == {ACTIVATE: True}

    def test_a_rollback_with_nothing_to_go_back_to_is_refused_and_makes_no_job(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        add_server(store, "dp1")
        with pytest.raises(NoTargets, match="dp1: no version of app is active there"):
            Service(store).rollback(pkg.name, ["dp1"], T0)
        with pytest.raises(NotFound, match="no package named other"):
            Service(store).rollback("other", ["dp1"], T0)
        assert store.list_jobs() == []

    def test_activation_behind_a_child_site_is_refused_for_now(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        with pytest.raises(UserError, match="not supported yet: br/dp1"):
            Service(store).activate(pkg.id, ["br/dp1"], T0)

    def test_a_heartbeat_after_a_restart_says_what_is_active_there(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        add_server(store, "dp1")
        service = Service(store)
        service.record_heartbeat("dp1", "boot-1", None, [pkg.id], T0, 30.0, active=[pkg.id])
        assert store.active_versions("dp1")[pkg.name].package_id == pkg.id
        assert f"{pkg.ref} active on dp1" in [e.message for e in store.recent_events(10)]
