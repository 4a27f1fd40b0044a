"""The store: the conformance suite run against SQLite, and a stateful property test.

The state machine drives a real SQLite store the way the despooler, agents and operators do
(distribute, claim, install, fail, worker crash, site restart, heartbeat, cancel, retry) with
a fake clock, and checks it against a model after every step. Its headline invariant: no
job is reported succeeded while a target does not hold the package.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from packdist.errors import InvalidTransition
from packdist.retry import RetryPolicy
from packdist.service import Service
from packdist.states import TERMINAL, InstructionState, JobState
from packdist.store import Store, open_store
from packdist.store.base import Claim
from packdist.store.sqlite import SQLiteStore
from tests.pgcluster import Cluster

for _suite in (
    "tests.unit.store_conformance",
    "tests.unit.child_conformance",
    "tests.unit.client_conformance",
):
    if _suite not in sys.modules:  # else pytest warns: too late to rewrite
        pytest.register_assert_rewrite(_suite)

from tests.unit.activation_conformance import ActivationConformance  # noqa: E402
from tests.unit.child_conformance import ChildSitesConformance  # noqa: E402
from tests.unit.client_conformance import ClientsConformance  # noqa: E402
from tests.unit.fleet_conformance import FleetPagesConformance  # noqa: E402
from tests.unit.rollout_conformance import RolloutConformance  # noqa: E402
from tests.unit.store_conformance import (  # noqa: E402
    T0,
    Backend,
    PeersConformance,
    StoreConformance,
    WakeupConformance,
    add_package,
    add_server,
)

S = InstructionState


# --- backends -----------------------------------------------------------------------------


class SQLiteBackend:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened: list[Store] = []

    def open(self) -> Store:
        store = open_store(self.path)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


class PostgresBackend:
    """A database of its own on the session's cluster; opening again is a site restart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[Store] = []

    def open(self) -> Store:
        store = open_store(self.url)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


BACKENDS = ("sqlite", "postgresql")


# Thousands of committed transactions per run: on tmpfs when there is one, fsync is free.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    folder = Path(tempfile.mkdtemp(prefix="packdist-store-", dir=SCRATCH))
    made: SQLiteBackend | PostgresBackend
    if request.param == "postgresql":
        made = PostgresBackend(request.getfixturevalue("pg_cluster").new_database())
    else:
        made = SQLiteBackend(folder / "site.db")
    yield made
    made.close_all()
    shutil.rmtree(folder, ignore_errors=True)


class TestStoreConformance(
    StoreConformance,
    WakeupConformance,
    PeersConformance,
    ChildSitesConformance,
    RolloutConformance,
    FleetPagesConformance,
    ActivationConformance,
    ClientsConformance,
):
    """The whole suite, once per backend in ``BACKENDS``."""


def test_open_store_is_sqlite(tmp_path: Path) -> None:
    store = open_store(tmp_path / "site.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert isinstance(store, Store)
    finally:
        store.close()


def test_reopening_does_not_migrate_twice(tmp_path: Path) -> None:
    first = open_store(tmp_path / "site.db")
    first.init_site("s", T0)
    first.close()
    second = open_store(tmp_path / "site.db")
    try:
        assert second.site_name() == "s"
    finally:
        second.close()


# --- the state machine --------------------------------------------------------------------

LEASE = 30.0
OFFLINE_AFTER = 20.0
SERVERS = ("dp1", "dp2", "dp3")
WORKERS = ("w1", "w2")
NON_TERMINAL = frozenset(S) - TERMINAL
CLAIMABLE = frozenset({S.PENDING, S.RETRYING})
POLICY = RetryPolicy(initial=30.0, factor=2.0, cap=600.0)  # slow enough for heartbeats to wake


def no_jitter() -> float:
    return 0.5


@dataclass
class JobModel:
    package_id: str
    targets: frozenset[str]
    max_attempts: int | None


@dataclass
class InstructionModel:
    job_id: str
    server: str
    state: InstructionState = S.PENDING
    attempts: int = 0
    attempts_base: int = 0
    owner: str | None = None
    lease_until: float | None = None
    next_at: float = 0.0
    last_error: str | None = None
    claimed_at: float | None = None


class StoreMachine(RuleBasedStateMachine):
    """On SQLite; :class:`PostgresStoreMachine` runs the same rules on PostgreSQL."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="packdist-store-", dir=SCRATCH))
        self.path: Path | str = self.new_database()
        self.store = open_store(self.path)
        self.store.init_site("s", T0)
        self.packages = [add_package(self.store, "app"), add_package(self.store, "tool")]
        for name in SERVERS:
            add_server(self.store, name)
        self.clock = T0
        self.jobs: dict[str, JobModel] = {}
        self.job_order: list[str] = []  # creation order: job ids are random
        self.instructions: dict[int, InstructionModel] = {}
        self.held: dict[str, dict[int, Claim]] = {w: {} for w in WORKERS}  # what workers believe
        self.holds: dict[str, set[str]] = {s: set() for s in SERVERS}  # what agents really hold
        self.boot: dict[str, str] = {s: f"{s}-boot-0" for s in SERVERS}
        self.boots = 0
        self.site_knows: dict[str, tuple[float, str] | None] = {s: None for s in SERVERS}
        self.back_at: dict[str, float | None] = {s: None for s in SERVERS}
        self.seen_attempts: dict[int, int] = {}

    def new_database(self) -> Path | str:
        return self.tmp / "site.db"

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- helpers --------------------------------------------------------------------------

    def _owns(self, worker: str, instruction_id: int) -> bool:
        m = self.instructions[instruction_id]
        return m.state is S.SENDING and m.owner == worker

    def _held(self) -> list[tuple[str, int]]:
        return [(w, i) for w in WORKERS for i in self.held[w]]

    def _release(self, m: InstructionModel, state: InstructionState) -> None:
        m.state = state
        m.owner = None
        m.lease_until = None

    # --- rules ----------------------------------------------------------------------------

    @rule(
        package=st.integers(0, 1),
        servers=st.lists(st.sampled_from(SERVERS), min_size=1, max_size=4),
        max_attempts=st.sampled_from([None, None, 1, 2, 3]),
    )
    def distribute(self, package: int, servers: list[str], max_attempts: int | None) -> None:
        pkg = self.packages[package]
        job_id = Service(self.store).add_job(pkg.id, servers, max_attempts, None, {}, self.clock)
        assert job_id not in self.jobs
        self.jobs[job_id] = JobModel(pkg.id, frozenset(servers), max_attempts)
        self.job_order.append(job_id)
        for i in self.store.get_job(job_id).instructions:
            assert i.id not in self.instructions
            self.instructions[i.id] = InstructionModel(job_id, i.server, next_at=self.clock)

    def _claim(self, worker: str, limit: int) -> list[Claim]:
        claimable = {
            iid: m
            for iid, m in self.instructions.items()
            if m.state in CLAIMABLE and m.next_at <= self.clock
        }
        claims = Service(self.store).claim_ready(worker, LEASE, limit, self.clock)
        got = [c.instruction_id for c in claims]
        assert len(set(got)) == len(got)
        assert set(got) <= set(claimable)
        assert len(got) == min(limit, len(claimable))
        left = [m.next_at for iid, m in claimable.items() if iid not in got]
        if got and left:  # the most overdue first
            assert max(claimable[iid].next_at for iid in got) <= min(left)
        for c in claims:
            m = self.instructions[c.instruction_id]
            job = self.jobs[m.job_id]
            m.state = S.SENDING
            m.attempts += 1
            m.owner = worker
            m.lease_until = self.clock + LEASE
            m.claimed_at = self.clock
            assert (c.job_id, c.server, c.package_id) == (m.job_id, m.server, job.package_id)
            assert (c.attempts, c.attempts_base) == (m.attempts, m.attempts_base)
            assert c.max_attempts == job.max_attempts
            self.held[worker][c.instruction_id] = c
        return claims

    def _succeeded(self, worker: str, iid: int) -> None:
        claim = self.held[worker].pop(iid)
        self.holds[claim.server].add(claim.package_id)  # the agent installed it
        if self._owns(worker, iid):
            Service(self.store).mark_installed(iid, worker, self.clock)
            m = self.instructions[iid]
            self._release(m, S.INSTALLED)
            m.last_error = None
        else:  # cancelled, or recovered after its lease expired
            event("a stale worker's success is refused")
            with pytest.raises(InvalidTransition):
                Service(self.store).mark_installed(iid, worker, self.clock)

    def _failed(self, worker: str, iid: int) -> None:
        claim = self.held[worker].pop(iid)
        policy = POLICY.with_limits(claim.max_attempts, claim.deadline)
        decision = policy.decide(
            claim.attempts - claim.attempts_base, claim.job_created_at, self.clock, no_jitter
        )
        error = f"connect timeout to {claim.server_url} (attempt {claim.attempts})"
        m = self.instructions[iid]
        owns = self._owns(worker, iid)
        if not owns:
            event("a stale worker's failure is refused")
        if decision.retry_at is None:
            if owns:
                Service(self.store).mark_failed(iid, worker, decision.reason, self.clock)
                self._release(m, S.FAILED)
                m.last_error = decision.reason
            else:
                with pytest.raises(InvalidTransition):
                    Service(self.store).mark_failed(iid, worker, decision.reason, self.clock)
        else:
            assert self.clock <= decision.retry_at <= self.clock + policy.cap
            if owns:
                Service(self.store).schedule_retry(
                    iid, worker, error, decision.retry_at, self.clock
                )
                self._release(m, S.RETRYING)
                m.last_error = error
                back = self.back_at[m.server]
                came_back = back is not None and m.claimed_at is not None and back > m.claimed_at
                if came_back:
                    event("the server came back during the attempt: retry due at once")
                m.next_at = self.clock if came_back else decision.retry_at
            else:
                with pytest.raises(InvalidTransition):
                    Service(self.store).schedule_retry(
                        iid, worker, error, decision.retry_at, self.clock
                    )

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim(self, worker: str, limit: int) -> None:
        self._claim(worker, limit)

    @rule(
        worker=st.sampled_from(WORKERS),
        outcomes=st.lists(
            st.sampled_from(["installed", "failed", "hangs"]), min_size=3, max_size=3
        ),
    )
    def despooler_round(self, worker: str, outcomes: list[str]) -> None:
        """Claim up to three instructions and carry each attempt out at once."""
        for claim, outcome in zip(self._claim(worker, 3), outcomes, strict=False):
            if outcome == "installed":
                self._succeeded(worker, claim.instruction_id)
            elif outcome == "failed":
                self._failed(worker, claim.instruction_id)

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def attempt_succeeded(self, data: st.DataObject) -> None:
        worker, iid = data.draw(st.sampled_from(self._held()), label="claim")
        self._succeeded(worker, iid)

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def attempt_failed(self, data: st.DataObject) -> None:
        worker, iid = data.draw(st.sampled_from(self._held()), label="claim")
        self._failed(worker, iid)

    @rule(worker=st.sampled_from(WORKERS), zombie=st.booleans())
    def worker_crash(self, worker: str, zombie: bool) -> None:
        """``worker`` dies (or, a zombie, freezes and wakes up later still believing in its
        claims); time passes beyond its leases while the other worker renews its own."""
        if not zombie:
            self.held[worker].clear()
        self.clock += LEASE + 1
        for survivor in WORKERS:
            if survivor == worker:
                continue
            for iid in list(self.held[survivor]):
                renewed = self.store.renew_lease(iid, survivor, self.clock + LEASE, 1, 1)
                assert renewed == self._owns(survivor, iid), (survivor, iid)
                if renewed:
                    self.instructions[iid].lease_until = self.clock + LEASE
                else:  # the worker learns it lost the instruction and drops it
                    del self.held[survivor][iid]
        expired = [
            m
            for m in self.instructions.values()
            if m.state is S.SENDING and m.lease_until is not None and m.lease_until < self.clock
        ]
        assert Service(self.store).recover_expired_leases(self.clock) == len(expired)
        event(f"a crash recovered {'some' if expired else 'no'} instruction(s)")
        for m in expired:
            self._release(m, S.RETRYING)
            m.next_at = self.clock
            m.last_error = "recovered"  # the store's own words; see below

    @rule(how=st.sampled_from(["stopped", "killed", "reconnected"]))
    def site_restart(self, how: str) -> None:
        """Close and reopen the store on the same file. ``stopped``: the despooler hands its
        instructions back first; ``killed``: its leases are left to expire; ``reconnected``:
        the workers outlive the store connection and keep their leases."""
        if how == "stopped":
            for worker in WORKERS:
                mine = [
                    m
                    for m in self.instructions.values()
                    if m.state is S.SENDING and m.owner == worker
                ]
                assert Service(self.store).release_leases(worker, self.clock) == len(mine)
                for m in mine:
                    self._release(m, S.RETRYING)
                    m.next_at = self.clock
        self.store.close()
        self.store = open_store(self.path)
        if how != "reconnected":
            for worker in WORKERS:
                self.held[worker].clear()

    @rule(server=st.sampled_from(SERVERS), silence=st.booleans(), reboot=st.booleans())
    def heartbeat(self, server: str, silence: bool, reboot: bool) -> None:
        if silence:
            self.clock += OFFLINE_AFTER + 1
        if reboot:
            self.boots += 1
            self.boot[server] = f"{server}-boot-{self.boots}"
        known = self.site_knows[server]
        came_back = (
            known is None or self.clock - known[0] > OFFLINE_AFTER or known[1] != self.boot[server]
        )
        due_later = [
            m
            for m in self.instructions.values()
            if m.server == server and m.state is S.RETRYING and m.next_at > self.clock
        ]
        woken = Service(self.store).record_heartbeat(
            server,
            self.boot[server],
            1 << 30,
            sorted(self.holds[server]),
            self.clock,
            OFFLINE_AFTER,
        )
        if came_back:
            self.back_at[server] = self.clock
            event(f"a heartbeat after silence or restart woke {'some' if woken else 'no'} retry")
            assert woken == len(due_later)
            for m in due_later:
                m.next_at = self.clock
        else:
            assert woken == 0
        self.site_knows[server] = (self.clock, self.boot[server])

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0, 30.0, 120.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock += seconds

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), action=st.sampled_from(["cancel", "retry"]))
    def operator(self, data: st.DataObject, action: str) -> None:
        job_id = data.draw(st.sampled_from(self.job_order), label="job")
        mine = [m for m in self.instructions.values() if m.job_id == job_id]
        if action == "cancel":
            unfinished = [m for m in mine if m.state in NON_TERMINAL]
            assert Service(self.store).cancel_job(job_id, self.clock) == len(unfinished)
            for m in unfinished:
                self._release(m, S.CANCELLED)
        else:
            revived = [m for m in mine if m.state in (S.FAILED, S.CANCELLED)]
            woken = [m for m in mine if m.state is S.RETRYING]
            assert Service(self.store).retry_job(job_id, self.clock) == len(revived) + len(woken)
            for m in revived:
                m.state = S.PENDING
                m.attempts_base = m.attempts
            for m in revived + woken:
                m.next_at = self.clock

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        for job_id in self.job_order:
            model = self.jobs[job_id]
            job = self.store.get_job(job_id)
            assert len(job.instructions) == len(model.targets)
            assert {i.server for i in job.instructions} == model.targets
            for i in job.instructions:
                m = self.instructions[i.id]
                assert (i.job_id, i.server) == (m.job_id, m.server) == (job_id, i.server)
                assert i.state is m.state, (i, m)
                assert i.attempts == m.attempts
                assert i.attempts >= self.seen_attempts.get(i.id, 0)
                self.seen_attempts[i.id] = i.attempts
                if m.last_error == "recovered":
                    assert i.last_error  # recovery names a reason of the store's choosing
                    m.last_error = i.last_error
                assert i.last_error == m.last_error
                if i.state in CLAIMABLE:
                    assert i.next_attempt_at == m.next_at
            unfinished = any(i.state not in TERMINAL for i in job.instructions)
            assert (job.state is JobState.ACTIVE) == unfinished
            event(f"a job ended {job.state.value}" if not unfinished else "a job is active")
            if job.state is JobState.SUCCEEDED:
                assert all(model.package_id in self.holds[s] for s in model.targets)

    @invariant()
    def job_counts_match_the_model(self) -> None:
        """The summary the views read (kept by the schema's triggers) says what the model
        says, per job and state, after every step."""
        counts = self.store.job_counts(self.job_order)
        for job_id in self.job_order:
            expected = {s.value: 0 for s in S}
            for m in self.instructions.values():
                if m.job_id == job_id:
                    expected[m.state.value] += 1
            assert counts[job_id] == expected, job_id
            assert self.store.get_job(job_id, limit=0).state is self.store.get_job(job_id).state

    @invariant()
    def next_due_matches_model(self) -> None:
        due = [m.next_at for m in self.instructions.values() if m.state in CLAIMABLE]
        assert self.store.next_due_at() == (min(due) if due else None)

    @invariant()
    def installed_shows_in_the_status_matrix(self) -> None:
        matrix = self.store.status_matrix()
        refs = {p.id: p.ref for p in self.packages}
        for m in self.instructions.values():
            if m.state is S.INSTALLED:
                assert matrix[refs[self.jobs[m.job_id].package_id]][m.server] == "installed"


StoreMachine.TestCase.settings = settings(
    # fewer under `make mutation`, which runs this once per mutant
    max_examples=int(os.environ.get("PACKDIST_MACHINE_EXAMPLES", "100")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreMachine = StoreMachine.TestCase


class PostgresStoreMachine(StoreMachine):
    cluster: Cluster | None = None

    def new_database(self) -> Path | str:
        assert self.cluster is not None
        return self.cluster.new_database()


def test_the_state_machine_holds_on_postgresql(pg_cluster: Cluster) -> None:
    """The same rules and invariants, on the other backend (fewer examples: each opens a
    database of its own)."""
    PostgresStoreMachine.cluster = pg_cluster
    run_state_machine_as_test(
        PostgresStoreMachine,
        settings=settings(
            max_examples=int(os.environ.get("PACKDIST_PG_MACHINE_EXAMPLES", "25")),
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_long_lists_of_one_plain_kind_go_as_one_array_and_others_keep_placeholders() -> None:
    from packdist.store.queries import LONG_LIST, POSTGRESQL, SQLITE

    n = LONG_LIST + 1
    sql, params = SQLITE.prepare("SELECT 1 WHERE x IN (:xs)", {"xs": list(range(n))})
    assert "json_each(:xs)" in sql and params["xs"] == json.dumps(list(range(n)))
    sql, params = POSTGRESQL.prepare("SELECT 1 WHERE x IN (:xs)", {"xs": ["a"] * n})
    assert "CAST(%(xs)s AS text[])" in sql and params["xs"] == ["a"] * n
    for mixed in ([0.5] * n, [1] * (n - 1) + [None], [True] * n, [1] * (n - 1) + ["a"]):
        sql, params = POSTGRESQL.prepare("SELECT 1 WHERE x IN (:xs)", {"xs": mixed})
        assert "unnest" not in sql and len(params) == n, mixed
