"""The store's summaries equal a recount of the history, whatever happened, on both stores.

The views read per-job state counts, attempt and byte totals, the transfer histogram and
the newest instruction of each (server, package) from tables the schema's triggers (and
``insert_job``) keep in the transaction of every change. Here random sequences of the
store's own events (:data:`packdist.states.TRANSITIONS`, through the one writer
``Store.apply``), progress reports and deletions are applied, and after each step every
summary is compared with a recount from ``instructions`` itself. On PostgreSQL, workers
claiming and settling across several jobs at once must leave the counts exact, with no
deadlock. A database written before the summaries existed gets them filled by the migration.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packdist import states
from packdist.errors import StoreError
from packdist.service import Service
from packdist.site.metrics import TRANSFER_BOUNDS
from packdist.store import Store, open_store
from packdist.store.instructions import Plus
from tests.fuzzing import fuzz, tried
from tests.pgcluster import Cluster
from tests.unit.store_conformance import T0, add_package, add_server

SERVERS = ("dp1", "dp2", "dp3", "dp4")
EVENTS = sorted(states.TRANSITIONS)
BACKENDS = ("sqlite", "postgresql")

RECOUNT_STATES = "SELECT job_id, state, count(*) AS n FROM instructions GROUP BY job_id, state"
RECOUNT_TOTALS = (
    "SELECT coalesce(sum(attempts), 0) AS attempts, coalesce(sum(bytes_sent), 0) AS bytes"
    " FROM instructions"
)
INSTALL_TIMES = (
    "SELECT finished_at - claimed_at AS d FROM instructions WHERE state = 'installed'"
    " AND claimed_at IS NOT NULL AND finished_at IS NOT NULL"
)
RECOUNT_NEWEST = (
    "SELECT i.server, j.package_id, max(i.id) AS newest FROM instructions i"
    " JOIN jobs j ON j.id = i.job_id GROUP BY i.server, j.package_id"
)
NEWEST = "SELECT server, package_id, instruction_id FROM newest_instructions"


def sql(store: Store, text: str, **params: Any) -> list[Any]:
    """Raw SQL, the test's own: a recount that does not trust the store's queries."""
    return store.db.rows_of(text, params)


def assert_summaries_equal_a_recount(store: Store, newest: bool = True) -> None:
    recount: dict[str, Counter[str]] = {}
    for r in sql(store, RECOUNT_STATES):
        recount.setdefault(r["job_id"], Counter())[r["state"]] = int(r["n"])
    jobs = [r["job_id"] for r in sql(store, "SELECT id AS job_id FROM jobs")]
    kept = store.job_counts(jobs)
    for job_id in jobs:
        expected = recount.get(job_id, Counter())
        assert kept[job_id] == {s.value: expected[s.value] for s in states.InstructionState}
        job = store.get_job(job_id, limit=0)
        assert job.total == sum(expected.values())
    by_state = Counter[str]()
    for c in recount.values():
        by_state.update(c)
    totals = store.metrics_totals(TRANSFER_BOUNDS)
    assert {s: n for s, n in totals.instructions.items() if n} == {
        s: n for s, n in by_state.items() if n
    }
    (sums,) = sql(store, RECOUNT_TOTALS)
    assert (totals.attempts, totals.bytes_sent) == (int(sums["attempts"]), int(sums["bytes"]))
    took = sorted(max(0.0, float(r["d"])) for r in sql(store, INSTALL_TIMES))
    assert totals.transfer_count == len(took)
    assert totals.transfer_sum == pytest.approx(sum(took))
    assert list(totals.transfer_buckets) == [
        sum(1 for d in took if d <= b) for b in TRANSFER_BOUNDS
    ]
    kinds = {
        r["kind"]: int(r["n"])
        for r in sql(store, "SELECT kind, count(*) AS n FROM events GROUP BY kind")
    }
    assert totals.events == kinds
    if newest:
        expected_newest = {
            (r["server"], r["package_id"]): r["newest"] for r in sql(store, RECOUNT_NEWEST)
        }
        kept_newest = {
            (r["server"], r["package_id"]): r["instruction_id"] for r in sql(store, NEWEST)
        }
        assert kept_newest == expected_newest


# --- one store per backend, shared by a test's examples ----------------------------------


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], Store]]:
    """Opens a fresh store of the backend (a new SQLite file, a new PostgreSQL database)."""
    folder = Path(tempfile.mkdtemp(prefix="packdist-summaries-"))
    opened: list[Store] = []
    cluster: Cluster | None = None
    if request.param == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")

    def make() -> Store:
        target: Path | str = cluster.new_database() if cluster else folder / f"site{len(opened)}.db"
        store = open_store(target)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    shutil.rmtree(folder, ignore_errors=True)


def seeded(store: Store) -> list[str]:
    store.init_site("s", T0)
    packages = [add_package(store, "app").id, add_package(store, "tool").id]
    for name in SERVERS:
        add_server(store, name)
    return packages


step = st.one_of(
    st.tuples(
        st.just("job"),
        st.integers(0, 1),
        st.lists(st.sampled_from(SERVERS), min_size=1, max_size=4, unique=True),
    ),
    st.tuples(st.just("apply"), st.sampled_from(EVENTS), st.lists(st.integers(0, 50), max_size=6)),
    st.tuples(st.just("progress"), st.integers(0, 50), st.integers(0, 10_000)),
    st.tuples(st.just("delete"), st.integers(0, 50), st.just(0)),
)


def test_counts_equal_a_recount_after_any_sequence_of_events(
    make_store: Callable[[], Store],
) -> None:
    @given(steps=st.lists(step, min_size=1, max_size=12))
    @fuzz(40)
    def run(steps: list[tuple[Any, Any, Any]]) -> None:
        tried("store summaries: events, progress and deletions vs a recount")
        store = make_store()
        try:
            play(store, steps)
        finally:
            store.close()

    run()


def play(store: Store, steps: list[tuple[Any, Any, Any]]) -> None:
    packages = seeded(store)
    service = Service(store)
    now = T0
    deleted = False
    for kind, a, b in steps:
        now += 1.5
        ids = [r["id"] for r in sql(store, "SELECT id FROM instructions ORDER BY id")]
        if kind == "job":
            # sometimes two jobs in one transaction: the summaries follow both
            with store.transaction():
                service.add_job(packages[a], b, None, None, {}, now)
                if len(b) > 1:
                    service.add_job(packages[1 - a], b[:1], None, None, {}, now)
        elif kind == "apply" and ids:
            chosen = [ids[i % len(ids)] for i in b]
            sets: dict[str, Any] = {}
            if a == "claim":
                sets = {"attempts": Plus(1), "lease_owner": "w", "claimed_at": now}
            elif a in ("installed", "removed", "fail", "cancel"):
                sets = {"finished_at": now, "lease_owner": None}
            if states.target(a) is states.InstructionState.CANCELLED:
                sets["cancel_cause"] = f"cancelled by {a}"
            store.apply(a, chosen, now, **sets)
        elif kind == "progress" and ids:
            store.renew_lease(ids[a % len(ids)], "w", now + 30, b, 10_000)
        elif kind == "delete" and ids:  # no use case deletes; the counts follow anyway
            with store.transaction():
                victim = ids[a % len(ids)]
                store.db.rows_of("DELETE FROM attempts WHERE instruction_id = :id", {"id": victim})
                store.db.rows_of("DELETE FROM instructions WHERE id = :id", {"id": victim})
            deleted = True
        assert_summaries_equal_a_recount(store, newest=not deleted)


def test_a_failed_transaction_leaves_the_counts_as_they_were(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    try:
        fail_half_way(store)
    finally:
        store.close()


def fail_half_way(store: Store) -> None:
    packages = seeded(store)
    service = Service(store)
    job = service.add_job(packages[0], list(SERVERS), None, None, {}, T0)
    before = store.job_counts([job])
    with pytest.raises(RuntimeError), store.transaction():
        ids = [r["id"] for r in store.job_instructions(job, frozenset({states.S.PENDING}))]
        store.apply("cancel", ids, T0 + 1, cancel_cause="test")
        assert store.job_counts([job])[job]["cancelled"] == len(SERVERS)  # seen inside
        raise RuntimeError("the use case failed half-way")
    assert store.job_counts([job]) == before
    assert_summaries_equal_a_recount(store)


# --- PostgreSQL: several workers at once ---------------------------------------------------


def test_concurrent_workers_across_several_jobs_keep_exact_counts_and_never_deadlock(
    pg_cluster: Cluster,
) -> None:
    """Four workers, each with its own pool, claim batches that span four jobs and settle
    them (installed, retried, failed) at once: batch claims change counter rows of several
    jobs in one transaction, in whatever order the rows come."""
    url = pg_cluster.new_database()
    setup = open_store(url)
    setup.init_site("s", T0)
    pkgs = [add_package(setup, f"p{k}").id for k in range(4)]
    names = [f"dp{k:02d}" for k in range(40)]
    with setup.transaction():
        for name in names:
            add_server(setup, name)
    jobs = [Service(setup).add_job(p, names, None, None, {}, T0) for p in pkgs]
    errors: list[BaseException] = []
    deadlocks: list[str] = []

    def worker(k: int) -> None:
        store = open_store(url)
        service = Service(store)
        rng = random.Random(k)
        try:
            for _round in range(40):
                now = T0 + 10 + _round
                try:
                    claims = service.claim_ready(f"w{k}", 300, 7, now)
                except StoreError as exc:
                    if "deadlock" in str(exc):
                        deadlocks.append(str(exc))
                    raise
                for c in claims:
                    roll = rng.random()
                    if roll < 0.6:
                        service.mark_installed(c.instruction_id, c.lease, now)
                    elif roll < 0.9:
                        service.schedule_retry(c.instruction_id, c.lease, "boom", now, now)
                    else:
                        service.mark_failed(c.instruction_id, c.lease, "gave up", now)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    try:
        assert not deadlocks, deadlocks
        assert not errors, errors
        assert_summaries_equal_a_recount(setup)
        counts = setup.job_counts(jobs)
        assert sum(sum(c.values()) for c in counts.values()) == 4 * len(names)
        assert sum(c["installed"] for c in counts.values()) > 0
    finally:
        setup.close()


# --- a database from before the summaries ---------------------------------------------------

DROP_SQLITE = (
    "DROP TRIGGER instructions_counted_on_insert",
    "DROP TRIGGER instructions_counted_on_change",
    "DROP TRIGGER instructions_counted_on_delete",
    "DROP TRIGGER instructions_totalled_on_change",
    "DROP TRIGGER instructions_totalled_on_delete",
    "DROP TRIGGER instructions_timed_when_installed",
    "DROP TRIGGER instructions_untimed_on_delete",
    "DROP TRIGGER events_counted",
    "DROP TABLE event_counts",
    "DROP TABLE job_state_counts",
    "DROP TABLE instruction_totals",
    "DROP TABLE transfer_histogram",
    "DROP TABLE newest_instructions",
    "DROP INDEX instructions_job_state",
    "DROP INDEX server_packages_package",  # and version 9's
    "DROP INDEX jobs_package",
    "ALTER TABLE events DROP COLUMN actor",  # and version 10's
    "ALTER TABLE servers DROP COLUMN removed_at",  # and version 11's
    "ALTER TABLE servers DROP COLUMN child",  # and version 12's
    "ALTER TABLE instructions DROP COLUMN phase",
    "DROP TABLE child_sites",
    "DROP TABLE server_active",  # and version 13's
    "ALTER TABLE instructions DROP COLUMN cancel_cause",  # and version 17's
    "DROP TABLE site_workers",  # and version 16's
    "ALTER TABLE servers DROP COLUMN offline_at",
    "DROP TABLE refused_agents",
    "DROP TABLE rollout_waves",  # and version 15's
    "DROP TABLE rollouts",
    "DROP INDEX events_rollouts",
    "DROP TABLE clients",  # and version 14's
    "DROP TABLE client_totals",
    "PRAGMA user_version=7",
)
DROP_POSTGRESQL = (
    "DROP FUNCTION packdist_count_instruction() CASCADE",
    "DROP FUNCTION packdist_total_instruction() CASCADE",
    "DROP FUNCTION packdist_time_install() CASCADE",
    "DROP FUNCTION packdist_count_event() CASCADE",
    "DROP TABLE event_counts",
    "DROP FUNCTION packdist_count_shard()",
    "DROP TABLE job_state_counts",
    "DROP TABLE instruction_totals",
    "DROP TABLE transfer_histogram",
    "DROP TABLE newest_instructions",
    "DROP INDEX instructions_job_state",
    "DROP INDEX server_packages_package",  # and version 9's
    "DROP INDEX jobs_package",
    "ALTER TABLE events DROP COLUMN actor",  # and version 10's
    "ALTER TABLE servers DROP COLUMN removed_at",  # and version 11's
    "ALTER TABLE servers DROP COLUMN child",  # and version 12's
    "ALTER TABLE instructions DROP COLUMN phase",
    "DROP TABLE child_sites",
    "DROP TABLE server_active",  # and version 13's
    "ALTER TABLE instructions DROP COLUMN cancel_cause",  # and version 17's
    "DROP TABLE site_workers",  # and version 16's
    "ALTER TABLE servers DROP COLUMN offline_at",
    "DROP TABLE refused_agents",
    "DROP TABLE rollout_waves",  # and version 15's
    "DROP TABLE rollouts",
    "DROP INDEX events_rollouts",
    "DROP TABLE clients",  # and version 14's
    "DROP TABLE client_totals",
    "DELETE FROM schema_version WHERE version >= 8",
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_migration_fills_the_summaries_from_the_rows_already_there(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target: Path | str = tmp_path / "site.db"
    if backend == "postgresql":
        target = request.getfixturevalue("pg_cluster").new_database()
    store = open_store(target)
    packages = seeded(store)
    service = Service(store)
    first = service.add_job(packages[0], ["dp1", "dp2", "dp3"], None, None, {}, T0)
    service.add_job(packages[1], ["dp1"], None, None, {}, T0)
    for c in service.claim_ready("w", 30, 2, T0 + 5):
        service.mark_installed(c.instruction_id, c.lease, T0 + 7)
    service.add_job(packages[0], ["dp3", "dp4"], None, None, {}, T0 + 9)  # newer for dp3
    service.cancel_job(first, T0 + 10)
    expected_counts = store.job_counts(r["id"] for r in sql(store, "SELECT id FROM jobs"))
    expected_totals = store.metrics_totals(TRANSFER_BOUNDS)
    expected_matrix = store.status_matrix()
    with store.transaction():  # back to schema 7: as written before this version
        for statement in DROP_POSTGRESQL if backend == "postgresql" else DROP_SQLITE:
            store.db.rows_of(statement, {})
    store.close()

    again = open_store(target)  # migrates to 8: the summaries are filled from the rows
    try:
        assert again.job_counts(expected_counts) == expected_counts
        assert again.metrics_totals(TRANSFER_BOUNDS) == expected_totals
        assert expected_totals.transfer_count == 2
        assert again.status_matrix() == expected_matrix
        assert_summaries_equal_a_recount(again)
    finally:
        again.close()
