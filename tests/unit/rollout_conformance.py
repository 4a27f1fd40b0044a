"""Rollouts in the store, and the use cases above them (create, advance wave by wave, pause
on failure, resume, cancel): the same on every backend. Mixed into the conformance suite
(``tests/unit/test_store.py``). Agents are played by the despooler's own calls (claim,
mark installed or failed), with an explicit clock."""

from __future__ import annotations

import threading

import pytest

from packdist.core.schedule import Schedule
from packdist.errors import ErrorKind, NotFound, UserError
from packdist.service import Service
from packdist.service.activation import ACTIVATE
from packdist.service.rollout_plan import parse_waves
from packdist.service.rollouts import HEALTH_CHECK, ROLLOUT, RolloutPlan
from packdist.states import RolloutState, WaveState
from packdist.store.base import PackageRecord, Store
from tests.unit.store_conformance import LEASE, T0, Backend, add_server

SERVERS = [f"dp{n}" for n in range(1, 11)]


def _fleet(store: Store) -> None:
    for name in SERVERS:
        add_server(store, name)


def _settle(store: Store, now: float, failing: frozenset[str] = frozenset()) -> list[str]:
    """Every due instruction claimed and ended as its agent would: installed, or failed
    for good on the ``failing`` servers. Returns the servers that were claimed."""
    service = Service(store)
    claimed = []
    for c in service.claim_ready("w", LEASE, 100, now):
        claimed.append(c.server)
        if c.server in failing:
            service.mark_failed(
                c.instruction_id, c.lease, "health check failed", now, ErrorKind.REFUSED
            )
        else:
            service.mark_installed(c.instruction_id, c.lease, now)
    return sorted(claimed)


def _waves(store: Store, rollout_id: str) -> list[WaveState]:
    return [w.state for w in Service(store).get_rollout(rollout_id).waves]


class RolloutConformance:
    def test_a_rollout_starts_each_wave_once_the_one_before_is_installed(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store, "ops")
        plan = RolloutPlan(pkg.id, SERVERS, parse_waves("1,50%,100%"), activate=True)
        rid = service.create_rollout(plan, T0)
        assert service.advance_rollouts(T0) == 1
        assert _settle(store, T0 + 1) == ["dp1"]
        service.advance_rollouts(T0 + 2)  # wave 1 judged, wave 2 started
        rollout = service.get_rollout(rid)
        assert [w.state for w in rollout.waves] == [
            WaveState.SUCCEEDED,
            WaveState.RUNNING,
            WaveState.WAITING,
        ]
        assert [len(w.servers) for w in rollout.waves] == [1, 4, 5]
        job = store.get_job(rollout.waves[1].job_id or "")
        assert job.options == {ACTIVATE: True, ROLLOUT: rid}
        assert _settle(store, T0 + 3) == ["dp2", "dp3", "dp4", "dp5"]
        service.advance_rollouts(T0 + 4)
        _settle(store, T0 + 5)
        service.advance_rollouts(T0 + 6)
        assert service.get_rollout(rid).state is RolloutState.SUCCEEDED
        words = [e.message for e in store.recent_events(50)]
        assert f"rollout {rid} succeeded: {pkg.ref} on every wave" in words

    def test_a_failed_wave_pauses_the_rollout_and_no_later_wave_gets_anything(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store)
        rid = service.create_rollout(RolloutPlan(pkg.id, SERVERS, parse_waves("2,100%")), T0)
        service.advance_rollouts(T0)
        _settle(store, T0 + 1, failing=frozenset({"dp2"}))
        service.advance_rollouts(T0 + 2)
        rollout = service.get_rollout(rid)
        assert rollout.state is RolloutState.PAUSED
        assert rollout.why == (
            "wave 1 failed: 1 of 2 servers (threshold 0%): dp2: health check failed"
        )
        assert _waves(store, rid) == [WaveState.FAILED, WaveState.WAITING]
        for later in range(3, 30):
            service.advance_rollouts(T0 + later)
            assert _settle(store, T0 + later) == []  # nothing for dp3..dp10
        service.resume_rollout(rid, T0 + 40)
        service.advance_rollouts(T0 + 41)
        assert _settle(store, T0 + 42) == sorted(SERVERS[2:])
        service.advance_rollouts(T0 + 43)
        assert service.get_rollout(rid).state is RolloutState.SUCCEEDED

    def test_a_server_that_never_reports_fails_its_wave_at_the_wave_timeout(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store)
        plan = RolloutPlan(pkg.id, SERVERS[:4], parse_waves("2,100%"), wave_timeout=60)
        rid = service.create_rollout(plan, T0)
        service.advance_rollouts(T0)
        claims = Service(store).claim_ready("w", LEASE, 100, T0 + 1)
        service.mark_installed(claims[0].instruction_id, claims[0].lease, T0 + 2)
        # the other stays under way, as for a server whose cable is pulled
        service.advance_rollouts(T0 + 59)
        assert service.get_rollout(rid).state is RolloutState.RUNNING
        service.advance_rollouts(T0 + 61)
        rollout = service.get_rollout(rid)
        assert rollout.state is RolloutState.PAUSED
        assert "1 not installed after 60s" in (rollout.why or "")
        job = store.get_job(rollout.waves[0].job_id or "")
        assert sorted(i.server for i in job.instructions) == ["dp1", "dp2"]  # never lost

    def test_failures_within_the_error_threshold_let_the_next_wave_start(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store)
        plan = RolloutPlan(pkg.id, SERVERS, parse_waves("5,100%"), error_threshold=20)
        rid = service.create_rollout(plan, T0)
        service.advance_rollouts(T0)
        _settle(store, T0 + 1, failing=frozenset({"dp1"}))
        service.advance_rollouts(T0 + 2)
        assert _waves(store, rid) == [WaveState.SUCCEEDED, WaveState.RUNNING]

    def test_a_paused_rollout_starts_no_wave_until_resumed(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store, "ops")
        rid = service.create_rollout(RolloutPlan(pkg.id, SERVERS, parse_waves("1,100%")), T0)
        service.advance_rollouts(T0)
        service.pause_rollout(rid, T0 + 1)
        _settle(store, T0 + 2)  # the started wave's instruction still runs
        service.advance_rollouts(T0 + 3)
        assert _waves(store, rid) == [WaveState.SUCCEEDED, WaveState.WAITING]
        assert service.get_rollout(rid).why == "paused by ops"
        with pytest.raises(UserError, match="is paused: cannot pause"):
            service.pause_rollout(rid, T0 + 4)
        service.resume_rollout(rid, T0 + 5)
        service.advance_rollouts(T0 + 6)
        assert _waves(store, rid) == [WaveState.SUCCEEDED, WaveState.RUNNING]

    def test_cancelling_a_rollout_cancels_its_unfinished_instructions_and_later_waves(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store)
        rid = service.create_rollout(RolloutPlan(pkg.id, SERVERS, parse_waves("3,100%")), T0)
        service.advance_rollouts(T0)
        assert service.cancel_rollout(rid, T0 + 1) == 3
        rollout = service.get_rollout(rid)
        assert rollout.state is RolloutState.CANCELLED
        assert [w.state for w in rollout.waves] == [WaveState.CANCELLED] * 2
        assert _settle(store, T0 + 2) == []
        with pytest.raises(UserError, match="is cancelled: cannot resume"):
            service.resume_rollout(rid, T0 + 3)

    def test_a_wave_does_not_start_outside_the_rollouts_windows(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store)
        # T0 is 1970-01-01 00:16 UTC, a Thursday: closed until 22:00
        plan = RolloutPlan(
            pkg.id, SERVERS, parse_waves("100%"), schedule=Schedule.parse(["daily 22:00-23:00"])
        )
        rid = service.create_rollout(plan, T0)
        service.advance_rollouts(T0)
        assert _waves(store, rid) == [WaveState.WAITING]
        assert service.get_rollout(rid).why == "waiting for window, opens Thu 22:00 (UTC)"
        opens = 22 * 3600.0
        service.advance_rollouts(opens + 1)
        assert _waves(store, rid) == [WaveState.RUNNING]
        assert service.get_rollout(rid).why is None

    def test_a_bad_plan_is_refused_and_records_nothing(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store)
        with pytest.raises(NotFound, match="unknown server"):
            service.create_rollout(RolloutPlan(pkg.id, ["dp1", "nope"], parse_waves("100%")), T0)
        with pytest.raises(UserError, match="make the last one 100%"):
            service.create_rollout(RolloutPlan(pkg.id, SERVERS, parse_waves("1,50%")), T0)
        with pytest.raises(UserError, match="needs --activate"):
            plan = RolloutPlan(pkg.id, SERVERS, parse_waves("100%"), health_check=["bin/check"])
            service.create_rollout(plan, T0)
        assert store.rollouts() == []

    def test_a_health_check_goes_to_the_agents_with_the_waves_job(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store)
        plan = RolloutPlan(
            pkg.id, SERVERS, parse_waves("100%"), activate=True, health_check=["bin/check", "-q"]
        )
        rid = service.create_rollout(plan, T0)
        service.advance_rollouts(T0)
        (claim, *_) = service.claim_ready("w", LEASE, 100, T0 + 1)
        assert claim.options[HEALTH_CHECK] == ["bin/check", "-q"]
        assert claim.options[ROLLOUT] == rid

    def test_waves_taken_from_a_group_spread_across_locations(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        service = Service(store)
        for n in range(1, 9):
            where = "hq" if n <= 6 else "branch"
            service.add_server(f"s{n}", f"http://s{n}.test", f"h{n}", [], {"site": where}, T0)
        plan = RolloutPlan(
            pkg.id, [f"s{n}" for n in range(1, 9)], parse_waves("4,100%"), spread="site"
        )
        rollout = service.get_rollout(service.create_rollout(plan, T0))
        first = set(rollout.waves[0].servers)
        assert first & {"s7", "s8"} and len(first & {"s1", "s2", "s3", "s4", "s5", "s6"}) == 3

    def test_two_site_workers_advancing_one_rollout_at_once_start_each_wave_once(
        self, backend: Backend, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        servers = SERVERS[:5]
        rid = Service(store).create_rollout(
            RolloutPlan(pkg.id, servers, parse_waves("1,2,3,4,100%")), T0
        )
        other = backend.open()  # a second site worker: its own connection
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def advance(s: Store, now: float) -> None:
            try:
                barrier.wait(5)
                Service(s).advance_rollouts(now)
            except BaseException as exc:  # seen by the test, not lost in the thread
                errors.append(exc)

        for step in range(12):
            now = T0 + 10 * step
            threads = [threading.Thread(target=advance, args=(s, now)) for s in (store, other)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            _settle(store, now + 1)
        assert errors == []
        assert Service(store).get_rollout(rid).state is RolloutState.SUCCEEDED
        jobs = store.list_jobs()
        assert len(jobs) == 5  # one per wave, never two
        assert sorted(i.server for j in jobs for i in store.get_job(j.id).instructions) == servers

    def test_cancelling_after_a_failed_wave_cancels_that_waves_retries_too(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        _fleet(store)
        service = Service(store)
        plan = RolloutPlan(pkg.id, SERVERS[:4], parse_waves("2,100%"), wave_timeout=60)
        rid = service.create_rollout(plan, T0)
        service.advance_rollouts(T0)
        Service(store).claim_ready("w", LEASE, 100, T0 + 1)  # both under way, never report
        service.advance_rollouts(T0 + 61)
        assert service.get_rollout(rid).state is RolloutState.PAUSED
        assert service.cancel_rollout(rid, T0 + 62) == 2
        job = store.get_job(service.get_rollout(rid).waves[0].job_id or "")
        assert {i.state.value for i in job.instructions} == {"cancelled"}
        assert [w.state for w in service.get_rollout(rid).waves] == [
            WaveState.FAILED, WaveState.CANCELLED,
        ]  # fmt: skip

    def test_a_pause_between_the_list_and_the_pass_holds(
        self, backend: Backend, store: Store, pkg: PackageRecord
    ) -> None:
        """A worker lists the rollouts, an operator pauses one (another process), then the
        worker's pass runs: it reads the rollout again under its lock and starts nothing."""
        _fleet(store)
        service = Service(store)
        rid = service.create_rollout(RolloutPlan(pkg.id, SERVERS, parse_waves("1,100%")), T0)
        listed = store.unfinished_rollout_ids()
        other = backend.open()
        Service(other, "ops").pause_rollout(rid, T0 + 1)
        real = store.unfinished_rollout_ids
        store.unfinished_rollout_ids = lambda: listed  # type: ignore[method-assign]  # stale
        try:
            service.advance_rollouts(T0 + 2)
        finally:
            store.unfinished_rollout_ids = real  # type: ignore[method-assign]
        assert _waves(store, rid) == [WaveState.WAITING, WaveState.WAITING]
        assert service.get_rollout(rid).why == "paused by ops"
