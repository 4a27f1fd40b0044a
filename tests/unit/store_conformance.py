"""The conformance suite every :class:`~packdist.store.base.Store` implementation must pass.

Written against the interface only. A test module subclasses :class:`StoreConformance` and
provides a ``backend`` fixture: an object whose ``open()`` returns a store on one fresh
database, the same database on every call (so closing and opening again is a site restart).
``tests/unit/test_store.py`` runs it against SQLite; PostgreSQL runs the same class.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import pytest

from packdist.core.chunking import DEFAULT_PARAMS
from packdist.core.digest import Digest
from packdist.core.manifest import ChunkRef, Entry, EntryType, Manifest
from packdist.errors import AlreadyExists, InvalidTransition, NoTargets, NotFound
from packdist.service import Service
from packdist.states import InstructionState, JobState
from packdist.store.base import Claim, InstructionRecord, JobRecord, PackageRecord, Store

S = InstructionState

T0 = 1_000.0  # the fake clock's start; every store call gets an explicit ``now``
LEASE = 30.0
OFFLINE_AFTER = 60.0


class Backend(Protocol):
    def open(self) -> Store:
        """A store on this backend's database (the same one on every call)."""


# --- builders -----------------------------------------------------------------------------


def make_manifest(name: str, version: str = "1.0", content: bytes = b"hello") -> Manifest:
    digest = Digest.of(content)
    entries = [
        Entry("bin", EntryType.DIR),
        Entry(
            "bin/run",
            EntryType.FILE,
            size=len(content),
            executable=True,
            chunks=(ChunkRef(digest, len(content)),),
        ),
    ]
    return Manifest.build(name, version, entries, DEFAULT_PARAMS)


def add_package(
    store: Store, name: str, version: str = "1.0", content: bytes | None = None
) -> PackageRecord:
    data = content if content is not None else f"{name}@{version}".encode()
    manifest = make_manifest(name, version, data)
    return Service(store).add_package(
        manifest, b"signature:" + name.encode(), manifest.chunk_sizes(), T0
    )


def add_server(store: Store, name: str, groups: tuple[str, ...] = ()) -> None:
    Service(store).add_server(
        name, f"http://{name}.test:8700", f"hash-of-{name}", list(groups), None, T0
    )


def instruction(job: JobRecord, server: str) -> InstructionRecord:
    (found,) = [i for i in job.instructions if i.server == server]
    return found


def claim_one(store: Store, owner: str, now: float, lease: float = LEASE) -> Claim:
    claims = Service(store).claim_ready(owner, lease, 1, now)
    assert len(claims) == 1, claims
    return claims[0]


class StoreConformance:
    """Every store passes these. Subclass with a ``backend`` fixture."""

    # --- fixtures -------------------------------------------------------------------------

    @pytest.fixture
    def store(self, backend: Backend) -> Iterator[Store]:
        store = backend.open()
        store.init_site("s", T0)
        yield store
        store.close()

    @pytest.fixture
    def pkg(self, store: Store) -> PackageRecord:
        return add_package(store, "app", "1.0")

    @pytest.fixture
    def servers(self, store: Store) -> list[str]:
        names = ["dp1", "dp2", "dp3"]
        for n, name in enumerate(names):
            add_server(store, name, ("all", f"g{n % 2}"))
        return names

    @pytest.fixture
    def job_id(self, store: Store, pkg: PackageRecord, servers: list[str]) -> str:
        return Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)

    # --- site -----------------------------------------------------------------------------

    def test_a_job_to_a_thousand_servers_takes_lists_of_any_length(
        self, store: Store, pkg: PackageRecord
    ) -> None:
        # long lists go to the database as one array: names, ids and states alike
        names = [f"dp{i:04d}" for i in range(1000)]
        with store.transaction():
            for name in names:
                add_server(store, name)
        with pytest.raises(NotFound, match="unknown server"):
            Service(store).add_job(pkg.id, [*names, "nobody"], None, None, {}, T0)
        job_id = Service(store).add_job(pkg.id, names, None, None, {}, T0)
        claims = Service(store).claim_ready("w:1", LEASE, 1000, T0 + 1)
        assert sorted(c.server for c in claims) == names
        assert {i.state for i in store.get_job(job_id).instructions} == {S.SENDING}
        Service(store).cancel_job(job_id, T0 + 2)
        assert {i.state for i in store.get_job(job_id).instructions} == {S.CANCELLED}
        digest = Digest.of(b"app@1.0")
        many = [digest] + [Digest.of(str(i).encode()) for i in range(100)]
        assert store.known_chunks(many) == {digest}

    def test_site_name(self, store: Store) -> None:
        assert store.site_name() == "s"

    def test_a_database_holds_one_site(self, store: Store) -> None:
        with pytest.raises(AlreadyExists):
            store.init_site("other", T0)
        assert store.site_name() == "s"

    # --- packages -------------------------------------------------------------------------

    def test_add_and_find_package(self, store: Store) -> None:
        manifest = make_manifest("app", "2.0", b"some bytes")
        rec = Service(store).add_package(manifest, b"sig", manifest.chunk_sizes(), T0)
        assert rec.id == manifest.id.hex
        assert rec.ref == "app@2.0"
        assert (rec.size, rec.file_count, rec.chunk_count) == (10, 1, 1)
        assert store.find_package("app", "2.0") == rec
        assert store.package_by_id(rec.id) == rec
        assert store.find_package("app", "9.9") is None
        assert store.package_by_id("0" * 64) is None
        assert store.package_manifest(rec.id) == (manifest.canonical(), b"sig")
        assert store.list_packages() == [rec]
        with pytest.raises(NotFound):
            store.package_manifest("0" * 64)

    def test_package_version_exists_once(self, store: Store) -> None:
        add_package(store, "app", "1.0")
        with pytest.raises(AlreadyExists):
            add_package(store, "app", "1.0", b"other content")
        assert len(store.list_packages()) == 1

    def test_known_chunks(self, store: Store) -> None:
        kept = Digest.of(b"app@1.0")
        add_package(store, "app", "1.0")
        unknown = Digest.of(b"never stored")
        assert store.known_chunks([kept, unknown]) == {kept}
        assert store.known_chunks([]) == set()

    # --- servers --------------------------------------------------------------------------

    def test_servers_and_groups(self, store: Store, servers: list[str]) -> None:
        assert [s.name for s in store.list_servers()] == servers
        dp1 = store.list_servers()[0]
        assert dp1.url == "http://dp1.test:8700"
        assert dp1.groups == ("all", "g0")
        assert dp1.last_seen is None
        assert store.servers_in_group("g0") == ["dp1", "dp3"]
        assert store.servers_in_group("all") == servers
        assert store.servers_in_group("nope") == []
        found = store.server_by_token_hash("hash-of-dp2")
        assert found is not None
        assert found.name == "dp2"
        assert store.server_by_token_hash("hash-of-nobody") is None

    def test_servers_named_are_the_enrolled_ones_with_their_groups(
        self, store: Store, servers: list[str]
    ) -> None:
        Service(store).remove_server("dp3", T0 + 1)
        found = store.servers_named(["dp2", "nobody", "dp1", "dp3"])
        assert [(s.name, s.groups) for s in found] == [
            ("dp1", ("all", "g0")),
            ("dp2", ("all", "g1")),
        ]
        assert found == [s for s in store.list_servers() if s.name in ("dp1", "dp2")]
        assert store.servers_named([]) == []

    def test_server_name_exists_once(self, store: Store, servers: list[str]) -> None:
        with pytest.raises(AlreadyExists):
            Service(store).add_server("dp1", "http://elsewhere", "another-hash", [], None, T0)

    def test_removed_server_is_gone_and_can_enrol_again(
        self, store: Store, servers: list[str]
    ) -> None:
        assert Service(store).remove_server("dp2", T0) == 0
        assert [s.name for s in store.list_servers()] == ["dp1", "dp3"]
        assert store.server_by_token_hash("hash-of-dp2") is None
        assert "dp2" not in store.servers_in_group("all")
        with pytest.raises(NotFound):
            Service(store).remove_server("dp2", T0)
        with pytest.raises(NotFound):
            Service(store).remove_server("nobody", T0)
        Service(store).add_server("dp2", "http://new", "new-hash", ["fresh"], None, T0)
        found = store.server_by_token_hash("new-hash")
        assert found is not None
        assert (found.name, found.url, found.groups) == ("dp2", "http://new", ("fresh",))

    # --- add_job --------------------------------------------------------------------------

    def test_add_job_creates_one_pending_instruction_per_target(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        job_id = Service(store).add_job(
            pkg.id, ["dp3", "dp1", "dp3"], 5, 600.0, {"force": True}, T0
        )
        job = store.get_job(job_id)
        assert job.id == job_id
        assert job.package_id == pkg.id
        assert job.package_ref == "app@1.0"
        assert job.created_at == T0
        assert (job.max_attempts, job.deadline, job.options) == (5, 600.0, {"force": True})
        assert job.state is JobState.ACTIVE
        assert [i.server for i in job.instructions] == ["dp1", "dp3"]
        for i in job.instructions:
            assert i.job_id == job_id
            assert i.state is S.PENDING
            assert i.attempts == 0
            assert i.last_error is None
            assert i.next_attempt_at == T0
            assert (i.bytes_sent, i.bytes_total) == (0, pkg.size)
            assert i.finished_at is None

    def test_add_job_refuses_no_targets(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        with pytest.raises(NoTargets):
            Service(store).add_job(pkg.id, [], None, None, {}, T0)
        self._assert_no_job(store)

    def test_add_job_refuses_unknown_server(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        with pytest.raises(NotFound, match="nobody"):
            Service(store).add_job(pkg.id, ["dp1", "nobody"], None, None, {}, T0)
        self._assert_no_job(store)

    def test_add_job_refuses_removed_server(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        Service(store).remove_server("dp2", T0)
        with pytest.raises(NotFound, match="dp2"):
            Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        self._assert_no_job(store)

    def test_add_job_refuses_unknown_package(self, store: Store, servers: list[str]) -> None:
        with pytest.raises(NotFound):
            Service(store).add_job("f" * 64, ["dp1"], None, None, {}, T0)
        self._assert_no_job(store)

    @staticmethod
    def _assert_no_job(store: Store) -> None:
        assert store.list_jobs() == []
        assert Service(store).claim_ready("w1", LEASE, 10, T0 + 1e6) == []
        assert store.next_due_at() is None
        assert [e for e in store.events() if e.job_id is not None] == []

    def test_unknown_job(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.get_job("nope")
        with pytest.raises(NotFound):
            Service(store).cancel_job("nope", T0)
        with pytest.raises(NotFound):
            Service(store).retry_job("nope", T0)

    def test_list_jobs_newest_first(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        first = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        second = Service(store).add_job(pkg.id, ["dp2"], None, None, {}, T0 + 1)
        assert [j.id for j in store.list_jobs()] == [second, first]
        assert [j.id for j in store.list_jobs(limit=1)] == [second]
        assert first != second

    # --- claims ---------------------------------------------------------------------------

    def test_claim_leases_and_counts_the_attempt(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        job_id = Service(store).add_job(pkg.id, ["dp2"], 3, 100.0, {}, T0)
        claim = claim_one(store, "w1", T0 + 1)
        assert claim == Claim(
            instruction_id=instruction(store.get_job(job_id), "dp2").id,
            job_id=job_id,
            server="dp2",
            server_url="http://dp2.test:8700",
            package_id=pkg.id,
            package_ref="app@1.0",
            attempts=1,
            attempts_base=0,
            job_created_at=T0,
            max_attempts=3,
            deadline=100.0,
            lease="w1",
        )
        i = instruction(store.get_job(job_id), "dp2")
        assert (i.state, i.attempts) == (S.SENDING, 1)
        # Held: nobody else gets it, not even after a while (the lease is not recovered).
        assert Service(store).claim_ready("w2", LEASE, 10, T0 + 2) == []
        assert Service(store).claim_ready("w1", LEASE, 10, T0 + 2) == []

    def test_claim_takes_only_due_work_up_to_the_limit(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        Service(store).add_job(pkg.id, servers, None, None, {}, T0 + 10)
        assert Service(store).claim_ready("w1", LEASE, 10, T0) == []
        assert store.next_due_at() == T0 + 10
        first = Service(store).claim_ready("w1", LEASE, 2, T0 + 10)
        second = Service(store).claim_ready("w2", LEASE, 2, T0 + 10)
        assert len(first) == 2
        assert len(second) == 1
        assert {c.server for c in first + second} == set(servers)
        assert store.next_due_at() is None

    def test_claim_skips_not_yet_due_retries(self, store: Store, job_id: str) -> None:
        claim = claim_one(store, "w1", T0)
        Service(store).schedule_retry(
            claim.instruction_id, "w1", "connect timeout", T0 + 50, T0 + 1
        )
        assert store.next_due_at() == T0 + 50
        assert Service(store).claim_ready("w1", LEASE, 1, T0 + 49) == []
        again = claim_one(store, "w2", T0 + 50)
        assert again.instruction_id == claim.instruction_id
        assert again.attempts == 2

    # --- outcomes -------------------------------------------------------------------------

    def test_mark_installed(self, store: Store, job_id: str, pkg: PackageRecord) -> None:
        claim = claim_one(store, "w1", T0)
        Service(store).mark_installed(claim.instruction_id, "w1", T0 + 5)
        job = store.get_job(job_id)
        i = instruction(job, "dp1")
        assert (i.state, i.attempts, i.finished_at, i.last_error) == (
            S.INSTALLED,
            1,
            T0 + 5,
            None,
        )
        assert job.state is JobState.SUCCEEDED
        assert store.status_matrix() == {"app@1.0": {"dp1": "installed"}}
        with pytest.raises(InvalidTransition):
            Service(store).mark_installed(claim.instruction_id, "w1", T0 + 6)

    def test_schedule_retry(self, store: Store, job_id: str) -> None:
        claim = claim_one(store, "w1", T0)
        Service(store).schedule_retry(claim.instruction_id, "w1", "connect refused", T0 + 8, T0 + 2)
        job = store.get_job(job_id)
        i = instruction(job, "dp1")
        assert (i.state, i.attempts, i.last_error, i.next_attempt_at) == (
            S.RETRYING,
            1,
            "connect refused",
            T0 + 8,
        )
        assert i.finished_at is None
        assert job.state is JobState.ACTIVE

    def test_mark_failed(self, store: Store, job_id: str) -> None:
        claim = claim_one(store, "w1", T0)
        Service(store).mark_failed(claim.instruction_id, "w1", "gave up after 1 attempts", T0 + 3)
        job = store.get_job(job_id)
        i = instruction(job, "dp1")
        assert (i.state, i.last_error, i.finished_at) == (
            S.FAILED,
            "gave up after 1 attempts",
            T0 + 3,
        )
        assert job.state is JobState.FAILED
        assert Service(store).claim_ready("w1", LEASE, 1, T0 + 1e6) == []

    def test_outcomes_require_the_lease_owner(self, store: Store, job_id: str) -> None:
        claim = claim_one(store, "w1", T0)
        iid = claim.instruction_id
        with pytest.raises(InvalidTransition):
            Service(store).mark_installed(iid, "w2", T0 + 1)
        with pytest.raises(InvalidTransition):
            Service(store).schedule_retry(iid, "w2", "boom", T0 + 10, T0 + 1)
        with pytest.raises(InvalidTransition):
            Service(store).mark_failed(iid, "w2", "boom", T0 + 1)
        i = instruction(store.get_job(job_id), "dp1")
        assert (i.state, i.attempts, i.last_error) == (S.SENDING, 1, None)
        assert not store.renew_lease(iid, "w2", T0 + 100, 1, 2)
        Service(store).mark_installed(iid, "w1", T0 + 2)

    def test_outcomes_require_a_sending_instruction(self, store: Store, job_id: str) -> None:
        iid = instruction(store.get_job(job_id), "dp1").id
        for owner in ("w1", ""):
            with pytest.raises(InvalidTransition):
                Service(store).mark_installed(iid, owner, T0)
            with pytest.raises(InvalidTransition):
                Service(store).schedule_retry(iid, owner, "x", T0, T0)
            with pytest.raises(InvalidTransition):
                Service(store).mark_failed(iid, owner, "x", T0)
        assert instruction(store.get_job(job_id), "dp1").state is S.PENDING
        with pytest.raises(InvalidTransition):
            Service(store).mark_installed(987_654, "w1", T0)

    def test_renew_lease(self, store: Store, job_id: str) -> None:
        claim = claim_one(store, "w1", T0)
        assert store.renew_lease(claim.instruction_id, "w1", T0 + 100, 40, 50)
        i = instruction(store.get_job(job_id), "dp1")
        assert (i.bytes_sent, i.bytes_total) == (40, 50)
        # The renewed lease is not expired at the old expiry time.
        assert Service(store).recover_expired_leases(T0 + LEASE + 1) == 0
        assert Service(store).recover_expired_leases(T0 + 101) == 1
        assert not store.renew_lease(claim.instruction_id, "w1", T0 + 200, 50, 50)

    # --- recovery -------------------------------------------------------------------------

    def test_dead_workers_instruction_returns_to_the_queue(self, store: Store, job_id: str) -> None:
        first = claim_one(store, "w1", T0)
        Service(store).schedule_retry(first.instruction_id, "w1", "remote timeout", T0 + 5, T0 + 1)
        claim = claim_one(store, "w1", T0 + 5)  # attempt 2; then w1 dies
        assert Service(store).recover_expired_leases(T0 + 5 + LEASE - 1) == 0
        assert Service(store).recover_expired_leases(T0 + 5 + LEASE + 1) == 1
        i = instruction(store.get_job(job_id), "dp1")
        assert (i.state, i.attempts) == (S.RETRYING, 2)
        assert "lease expired" in (i.last_error or "")  # not the stale error of attempt 1
        assert i.next_attempt_at <= T0 + 5 + LEASE + 1
        # The dead worker's lease is gone: anything it says now is refused.
        with pytest.raises(InvalidTransition):
            Service(store).mark_installed(claim.instruction_id, "w1", T0 + 40)
        assert Service(store).recover_expired_leases(T0 + 1000) == 0
        again = claim_one(store, "w2", T0 + 5 + LEASE + 1)
        assert (again.instruction_id, again.attempts) == (claim.instruction_id, 3)

    def test_recovery_without_an_earlier_error_says_why(self, store: Store, job_id: str) -> None:
        claim_one(store, "w1", T0)
        assert Service(store).recover_expired_leases(T0 + LEASE + 1) == 1
        i = instruction(store.get_job(job_id), "dp1")
        assert i.state is S.RETRYING
        assert i.last_error
        assert store.get_job(job_id).state is JobState.ACTIVE

    def test_recovery_leaves_live_leases_alone(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        job_id = Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        claim_one(store, "w1", T0)
        live = claim_one(store, "w2", T0 + 20)
        assert Service(store).recover_expired_leases(T0 + LEASE + 1) == 1
        states = {i.server: i.state for i in store.get_job(job_id).instructions}
        assert states[live.server] is S.SENDING
        assert sorted(states.values()) == sorted([S.SENDING, S.RETRYING])
        Service(store).mark_installed(live.instruction_id, "w2", T0 + LEASE + 2)

    def test_release_leases_hands_a_stopping_workers_instructions_back(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        job_id = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        first = claim_one(store, "w1", T0)
        Service(store).schedule_retry(first.instruction_id, "w1", "remote timeout", T0 + 1, T0)
        mine = claim_one(store, "w1", T0 + 1)
        assert (mine.instruction_id, mine.attempts) == (first.instruction_id, 2)
        other_job = Service(store).add_job(pkg.id, ["dp2"], None, None, {}, T0 + 1)
        theirs = claim_one(store, "w2", T0 + 1)
        assert theirs.job_id == other_job

        assert Service(store).release_leases("w1", T0 + 2) == 1
        job = store.get_job(job_id)
        i = instruction(job, "dp1")
        assert (i.state, i.attempts, i.last_error, i.next_attempt_at) == (
            S.RETRYING,
            2,
            "remote timeout",
            T0 + 2,
        )
        assert job.state is JobState.ACTIVE
        assert instruction(store.get_job(other_job), "dp2").state is S.SENDING
        with pytest.raises(InvalidTransition):
            Service(store).mark_installed(mine.instruction_id, "w1", T0 + 3)
        assert Service(store).release_leases("w1", T0 + 3) == 0
        assert Service(store).recover_expired_leases(T0 + LEASE) == 0
        assert [e.kind for e in store.events(job_id)][-1] == "recovered"
        again = claim_one(store, "w3", T0 + 2)
        assert (again.instruction_id, again.attempts) == (mine.instruction_id, 3)
        Service(store).mark_installed(theirs.instruction_id, "w2", T0 + 4)

    # --- restart --------------------------------------------------------------------------

    def test_retry_state_survives_a_restart(self, backend: Backend, store: Store) -> None:
        pkg = add_package(store, "app")
        add_server(store, "dp1")
        add_server(store, "dp2")
        job_id = Service(store).add_job(pkg.id, ["dp1", "dp2"], 4, None, {"k": 1}, T0)
        c1 = claim_one(store, "w1", T0)
        c2 = claim_one(store, "w1", T0)
        Service(store).schedule_retry(c1.instruction_id, "w1", "connect refused", T0 + 30, T0 + 1)
        before = store.get_job(job_id)
        store.close()

        reopened = backend.open()
        try:
            after = reopened.get_job(job_id)
            assert after == before
            assert reopened.site_name() == "s"
            assert reopened.next_due_at() == T0 + 30
            # The lease held before the restart is still honoured and still expires.
            assert Service(reopened).claim_ready("w2", LEASE, 5, T0 + 29) == []
            again = claim_one(reopened, "w2", T0 + 30)
            assert (again.instruction_id, again.attempts) == (c1.instruction_id, 2)
            assert Service(reopened).recover_expired_leases(T0 + LEASE + 1) == 1
            i = instruction(reopened.get_job(job_id), c2.server)
            assert (i.state, i.attempts) == (S.RETRYING, 1)
        finally:
            reopened.close()

    # --- heartbeats -----------------------------------------------------------------------

    def _retrying(self, store: Store, job_id: str, server: str, retry_at: float) -> int:
        claims = Service(store).claim_ready("w1", LEASE, 10, T0)
        (claim,) = [c for c in claims if c.server == server]
        Service(store).schedule_retry(claim.instruction_id, "w1", "unreachable", retry_at, T0)
        for other in claims:
            if other is not claim:
                Service(store).mark_installed(other.instruction_id, "w1", T0)
        return claim.instruction_id

    def test_heartbeat_after_silence_wakes_retrying_instructions(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        other_pkg = add_package(store, "tool")
        job_id = Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        other_job = Service(store).add_job(other_pkg.id, ["dp1"], None, None, {}, T0)
        Service(store).record_heartbeat("dp1", "boot-a", 10, [], T0, OFFLINE_AFTER)
        claims = Service(store).claim_ready("w1", LEASE, 10, T0)
        assert len(claims) == 3
        for c in claims:
            Service(store).schedule_retry(c.instruction_id, "w1", "unreachable", T0 + 500, T0)

        # A regular heartbeat: nothing changes.
        assert Service(store).record_heartbeat("dp1", "boot-a", 10, [], T0 + 30, OFFLINE_AFTER) == 0
        assert instruction(store.get_job(job_id), "dp1").next_attempt_at == T0 + 500

        # Silent for longer than offline_after: both of dp1's retrying instructions wake.
        now = T0 + 30 + OFFLINE_AFTER + 1
        assert Service(store).record_heartbeat("dp1", "boot-a", 10, [], now, OFFLINE_AFTER) == 2
        assert instruction(store.get_job(job_id), "dp1").next_attempt_at == now
        assert instruction(store.get_job(other_job), "dp1").next_attempt_at == now
        assert instruction(store.get_job(job_id), "dp2").next_attempt_at == T0 + 500
        assert instruction(store.get_job(job_id), "dp1").state is S.RETRYING
        assert {c.server for c in Service(store).claim_ready("w1", LEASE, 10, now)} == {"dp1"}

        servers_now = {s.name: s for s in store.list_servers()}
        assert servers_now["dp1"].last_seen == now
        assert servers_now["dp1"].disk_free == 10
        assert servers_now["dp2"].last_seen is None

    def test_heartbeat_with_a_new_boot_id_wakes_retrying_instructions(
        self, store: Store, job_id: str
    ) -> None:
        Service(store).record_heartbeat("dp1", "boot-a", None, [], T0, OFFLINE_AFTER)
        iid = self._retrying(store, job_id, "dp1", T0 + 500)
        assert (
            Service(store).record_heartbeat("dp1", "boot-a", None, [], T0 + 1, OFFLINE_AFTER) == 0
        )
        assert (
            Service(store).record_heartbeat("dp1", "boot-b", None, [], T0 + 2, OFFLINE_AFTER) == 1
        )
        i = instruction(store.get_job(job_id), "dp1")
        assert (i.id, i.state, i.next_attempt_at) == (iid, S.RETRYING, T0 + 2)
        assert (
            Service(store).record_heartbeat("dp1", "boot-b", None, [], T0 + 3, OFFLINE_AFTER) == 0
        )

    def test_first_heartbeat_wakes_retrying_instructions(self, store: Store, job_id: str) -> None:
        self._retrying(store, job_id, "dp1", T0 + 500)
        assert (
            Service(store).record_heartbeat("dp1", "boot-a", None, [], T0 + 5, OFFLINE_AFTER) == 1
        )
        assert instruction(store.get_job(job_id), "dp1").next_attempt_at == T0 + 5

    def test_heartbeat_does_not_delay_due_work_or_touch_other_states(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        job_id = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        claim = claim_one(store, "w1", T0)
        Service(store).schedule_retry(claim.instruction_id, "w1", "unreachable", T0 + 1, T0)
        assert Service(store).record_heartbeat("dp1", "b", None, [], T0 + 100, OFFLINE_AFTER) == 0
        assert instruction(store.get_job(job_id), "dp1").next_attempt_at == T0 + 1
        pending = Service(store).add_job(pkg.id, ["dp2"], None, None, {}, T0 + 200)
        assert Service(store).record_heartbeat("dp2", "b", None, [], T0 + 100, OFFLINE_AFTER) == 0
        assert instruction(store.get_job(pending), "dp2").state is S.PENDING

    def test_heartbeat_reports_what_the_server_holds(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        Service(store).record_heartbeat("dp2", "b", None, [pkg.id, "0" * 64], T0, OFFLINE_AFTER)
        assert store.status_matrix() == {"app@1.0": {"dp2": "installed"}}
        Service(store).record_heartbeat("dp2", "b", None, [], T0 + 1, OFFLINE_AFTER)
        assert store.status_matrix() == {}

    def test_heartbeat_from_unknown_server(self, store: Store, servers: list[str]) -> None:
        with pytest.raises(NotFound):
            Service(store).record_heartbeat("nobody", "b", None, [], T0, OFFLINE_AFTER)
        Service(store).remove_server("dp1", T0)
        with pytest.raises(NotFound):
            Service(store).record_heartbeat("dp1", "b", None, [], T0, OFFLINE_AFTER)

    # --- operator actions -----------------------------------------------------------------

    def test_cancel_job(self, store: Store, pkg: PackageRecord, servers: list[str]) -> None:
        job_id = Service(store).add_job(pkg.id, servers, None, None, {}, T0)
        c1, c2, c3 = sorted(Service(store).claim_ready("w1", LEASE, 3, T0), key=lambda c: c.server)
        Service(store).mark_installed(c1.instruction_id, "w1", T0 + 1)
        Service(store).schedule_retry(c2.instruction_id, "w1", "x", T0 + 50, T0 + 1)
        # dp3 is still sending
        assert Service(store).cancel_job(job_id, T0 + 2) == 2
        job = store.get_job(job_id)
        assert [i.state for i in job.instructions] == [S.INSTALLED, S.CANCELLED, S.CANCELLED]
        assert job.state is JobState.CANCELLED
        assert instruction(job, "dp3").finished_at == T0 + 2
        # The worker still sending to dp3 lost its lease.
        assert not store.renew_lease(c3.instruction_id, "w1", T0 + 100, 1, 1)
        with pytest.raises(InvalidTransition):
            Service(store).mark_installed(c3.instruction_id, "w1", T0 + 3)
        assert Service(store).recover_expired_leases(T0 + 1000) == 0
        assert Service(store).claim_ready("w1", LEASE, 10, T0 + 1000) == []
        assert Service(store).cancel_job(job_id, T0 + 4) == 0

    def test_retry_job(self, store: Store, pkg: PackageRecord, servers: list[str]) -> None:
        job_id = Service(store).add_job(pkg.id, servers, 1, None, {}, T0)
        c1, c2, c3 = sorted(Service(store).claim_ready("w1", LEASE, 3, T0), key=lambda c: c.server)
        Service(store).mark_installed(c1.instruction_id, "w1", T0 + 1)
        Service(store).mark_failed(c2.instruction_id, "w1", "gave up after 1 attempts", T0 + 1)
        Service(store).schedule_retry(c3.instruction_id, "w1", "x", T0 + 500, T0 + 1)
        assert Service(store).retry_job(job_id, T0 + 10) == 2
        job = store.get_job(job_id)
        assert job.state is JobState.ACTIVE
        dp1, dp2, dp3 = job.instructions
        assert dp1.state is S.INSTALLED
        assert (dp2.state, dp2.attempts, dp2.next_attempt_at, dp2.finished_at) == (
            S.PENDING,
            1,
            T0 + 10,
            None,
        )
        assert (dp3.state, dp3.next_attempt_at) == (S.RETRYING, T0 + 10)
        claims = {c.server: c for c in Service(store).claim_ready("w2", LEASE, 10, T0 + 10)}
        assert set(claims) == {"dp2", "dp3"}
        # Attempts keep counting; the operator retry starts a new allowance.
        assert (claims["dp2"].attempts, claims["dp2"].attempts_base) == (2, 1)
        assert (claims["dp3"].attempts, claims["dp3"].attempts_base) == (2, 0)

    def test_retry_job_after_cancel(self, store: Store, job_id: str) -> None:
        Service(store).cancel_job(job_id, T0)
        assert store.get_job(job_id).state is JobState.CANCELLED
        assert Service(store).retry_job(job_id, T0 + 1) == 1
        assert store.get_job(job_id).state is JobState.ACTIVE
        assert claim_one(store, "w1", T0 + 1).attempts == 1

    def test_remove_server_cancels_its_unfinished_instructions(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        other = add_package(store, "tool")
        job_a = Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        job_b = Service(store).add_job(other.id, ["dp2"], None, None, {}, T0)
        job_c = Service(store).add_job(other.id, ["dp2", "dp3"], None, None, {}, T0 + 100)
        claims = Service(store).claim_ready("w1", LEASE, 10, T0)
        assert len(claims) == 3
        (sending,) = [cl for cl in claims if cl.job_id == job_a and cl.server == "dp2"]
        for cl in claims:
            if cl.job_id == job_b:
                Service(store).mark_installed(cl.instruction_id, "w1", T0 + 1)
            elif cl.server == "dp1":
                Service(store).schedule_retry(cl.instruction_id, "w1", "x", T0 + 50, T0 + 1)
        # dp2 of job_a stays sending
        assert Service(store).remove_server("dp2", T0) == 2  # job_a (sending) and job_c (pending)
        a, b, c = store.get_job(job_a), store.get_job(job_b), store.get_job(job_c)
        assert instruction(a, "dp2").state is S.CANCELLED
        assert instruction(a, "dp2").last_error
        assert instruction(a, "dp1").state is S.RETRYING
        assert instruction(b, "dp2").state is S.INSTALLED
        assert instruction(c, "dp2").state is S.CANCELLED
        assert instruction(c, "dp3").state is S.PENDING
        assert a.state is JobState.ACTIVE
        assert b.state is JobState.SUCCEEDED
        with pytest.raises(InvalidTransition):
            Service(store).mark_installed(sending.instruction_id, "w1", T0 + 2)
        assert {cl.server for cl in Service(store).claim_ready("w1", LEASE, 10, T0 + 1000)} == {
            "dp1",
            "dp3",
        }

    def test_retry_job_does_not_revive_a_removed_servers_instruction(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        job_id = Service(store).add_job(pkg.id, ["dp1", "dp2"], 1, None, {}, T0)
        for c in Service(store).claim_ready("w1", LEASE, 10, T0):
            Service(store).mark_failed(c.instruction_id, "w1", "gave up", T0 + 1)
        Service(store).remove_server("dp2", T0)
        assert Service(store).retry_job(job_id, T0 + 2) == 1
        job = store.get_job(job_id)
        assert instruction(job, "dp2").state is S.FAILED
        (claim,) = Service(store).claim_ready("w1", LEASE, 10, T0 + 2)
        Service(store).mark_installed(claim.instruction_id, "w1", T0 + 3)
        # Nothing is left that no worker would ever claim: the job finishes.
        assert store.get_job(job_id).state is JobState.FAILED
        assert store.next_due_at() is None

    def test_retry_job_leaves_a_removed_servers_cancelled_instruction(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        job_id = Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        Service(store).remove_server("dp2", T0)
        assert Service(store).retry_job(job_id, T0 + 1) == 0
        assert instruction(store.get_job(job_id), "dp2").state is S.CANCELLED
        (claim,) = Service(store).claim_ready("w1", LEASE, 10, T0 + 1)
        Service(store).mark_installed(claim.instruction_id, "w1", T0 + 2)
        assert store.get_job(job_id).state is JobState.CANCELLED
        assert store.next_due_at() is None

    # --- views ----------------------------------------------------------------------------

    def test_status_matrix(self, store: Store, pkg: PackageRecord, servers: list[str]) -> None:
        assert store.status_matrix() == {}
        tool = add_package(store, "tool", "2.1")
        Service(store).add_job(pkg.id, ["dp1", "dp2"], 1, None, {}, T0)
        Service(store).add_job(tool.id, ["dp3"], None, None, {}, T0 + 1)
        assert store.status_matrix() == {
            "app@1.0": {"dp1": "pending", "dp2": "pending"},
            "tool@2.1": {"dp3": "pending"},
        }
        for c in Service(store).claim_ready("w1", LEASE, 10, T0 + 1):
            if c.server == "dp1":
                Service(store).mark_installed(c.instruction_id, "w1", T0 + 2)
            elif c.server == "dp2":
                Service(store).mark_failed(c.instruction_id, "w1", "x", T0 + 2)
        assert store.status_matrix() == {
            "app@1.0": {"dp1": "installed", "dp2": "failed"},
            "tool@2.1": {"dp3": "sending"},
        }
        # A newer job to a server that holds the package does not hide it.
        Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0 + 3)
        assert store.status_matrix()["app@1.0"] == {"dp1": "installed", "dp2": "pending"}
        Service(store).remove_server("dp1", T0)
        assert store.status_matrix()["app@1.0"] == {"dp2": "pending"}

    def test_a_corrupt_copy_queues_one_repair_and_shows_until_it_is_installed(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        claim = claim_one(store, "w1", T0)
        assert claim.options == {}
        Service(store).mark_installed(claim.instruction_id, "w1", T0 + 1)
        problems = [
            {"path": "bin/run", "problem": "altered"},
            {"path": "lib/x", "problem": "missing"},
        ]
        job_id = Service(store).record_validation("dp1", pkg.id, problems, T0 + 2)
        assert job_id is not None
        assert store.get_job(job_id).options == {"repair": True}
        assert store.status_matrix()["app@1.0"] == {"dp1": "corrupt"}
        [cell] = [c for c in store.status_cells() if c.server == "dp1"]
        assert cell.corrupt == "bin/run altered, lib/x missing" and cell.job_id == job_id
        [event] = [e for e in store.events(job_id) if e.kind == "corrupt"]
        assert "bin/run altered, lib/x missing" in event.message and event.server == "dp1"
        # found again while the repair is queued: no second repair
        assert Service(store).record_validation("dp1", pkg.id, problems, T0 + 3) is None
        assert len(store.list_jobs()) == 2
        repair = claim_one(store, "w1", T0 + 4)
        assert repair.job_id == job_id and repair.options == {"repair": True}
        # any job to a copy known corrupt repairs it (never taken as already installed)
        plain = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0 + 4)
        assert claim_one(store, "w2", T0 + 4).options == {"repair": True}
        Service(store).cancel_job(plain, T0 + 4)
        assert store.status_matrix()["app@1.0"] == {"dp1": "corrupt"}
        Service(store).mark_installed(repair.instruction_id, "w1", T0 + 5)
        assert store.status_matrix()["app@1.0"] == {"dp1": "installed"}
        [cell] = [c for c in store.status_cells() if c.server == "dp1"]
        assert cell.corrupt is None and cell.installed
        # damaged again later: a new repair; healed by other means: the mark goes
        again = Service(store).record_validation("dp1", pkg.id, problems[:1], T0 + 6)
        assert again is not None and again != job_id
        assert Service(store).record_validation("dp1", pkg.id, [], T0 + 7) is None
        assert store.status_matrix()["app@1.0"]["dp1"] != "corrupt"
        # unknown packages and removed servers are ignored
        assert Service(store).record_validation("dp1", "0" * 64, problems, T0 + 8) is None
        Service(store).remove_server("dp2", T0)
        assert Service(store).record_validation("dp2", pkg.id, problems, T0 + 8) is None

    def test_events_are_written(self, store: Store, job_id: str) -> None:
        claim = claim_one(store, "w1", T0 + 1)
        Service(store).schedule_retry(claim.instruction_id, "w1", "connect timeout", T0 + 5, T0 + 2)
        claim = claim_one(store, "w1", T0 + 5)
        Service(store).mark_installed(claim.instruction_id, "w1", T0 + 6)
        events = store.events(job_id)
        assert [e.kind for e in events] == ["created", "attempt", "failure", "attempt", "installed"]
        assert [e.at for e in events] == [T0, T0 + 1, T0 + 2, T0 + 5, T0 + 6]
        assert all(e.job_id == job_id for e in events)
        assert [e.server for e in events[1:]] == ["dp1"] * 4
        assert "connect timeout" in events[2].message
        assert "app@1.0" in events[0].message
        assert [e.id for e in events] == sorted(e.id for e in events)
        assert store.events(job_id, after_id=events[2].id) == events[3:]
        assert store.events("other-job") == []
        everything = store.events()
        assert {e.kind for e in everything} >= {"package", "server", "created", "installed"}

    def test_events_of_operator_actions_and_recovery(self, store: Store, job_id: str) -> None:
        claim_one(store, "w1", T0)
        Service(store).recover_expired_leases(T0 + LEASE + 1)
        Service(store).cancel_job(job_id, T0 + 40)
        Service(store).retry_job(job_id, T0 + 41)
        kinds = [e.kind for e in store.events(job_id)]
        assert kinds == ["created", "attempt", "recovered", "cancelled", "retry"]

    def test_events_keep_the_given_time_even_zero(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        job_id = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, 0.0)
        claim = claim_one(store, "w1", 0.0)
        Service(store).mark_installed(claim.instruction_id, "w1", 0.0)
        assert [e.at for e in store.events(job_id)] == [0.0, 0.0, 0.0]

    # --- operator views ---------------------------------------------------------------------

    def test_status_cells_say_what_and_why(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        assert store.status_cells() == []
        job = Service(store).add_job(pkg.id, ["dp1", "dp2", "dp3"], None, None, {}, T0)
        by_server = {c.server: c for c in Service(store).claim_ready("w1", LEASE, 10, T0 + 1)}
        Service(store).mark_installed(by_server["dp1"].instruction_id, "w1", T0 + 2)
        Service(store).schedule_retry(
            by_server["dp2"].instruction_id, "w1", "connection refused", T0 + 9, T0 + 2
        )
        cells = {c.server: c for c in store.status_cells()}
        assert sorted(cells) == ["dp1", "dp2", "dp3"]
        assert all(c.package_ref == "app@1.0" and c.package_id == pkg.id for c in cells.values())
        assert cells["dp1"].installed and cells["dp1"].state is S.INSTALLED
        dp2 = cells["dp2"]
        assert not dp2.installed and dp2.state is S.RETRYING and dp2.job_id == job
        assert dp2.last_error == "connection refused" and dp2.next_attempt_at == T0 + 9
        assert dp2.attempts == 1
        assert cells["dp3"].state is S.SENDING
        # the newest job of a pair speaks for it; a removed server is not shown
        newer = Service(store).add_job(pkg.id, ["dp2"], None, None, {}, T0 + 3)
        cells = {c.server: c for c in store.status_cells()}
        assert cells["dp2"].job_id == newer and cells["dp2"].state is S.PENDING
        Service(store).remove_server("dp3", T0)
        assert "dp3" not in {c.server for c in store.status_cells()}

    def test_recent_events_are_the_newest_oldest_first(self, store: Store, job_id: str) -> None:
        claim = claim_one(store, "w1", T0 + 1)
        Service(store).schedule_retry(claim.instruction_id, "w1", "boom", T0 + 5, T0 + 2)
        every = store.events()
        assert store.recent_events(1000) == every
        assert store.recent_events(2) == every[-2:]
        mine = store.events(job_id)
        assert store.recent_events(2, job_id) == mine[-2:]
        assert store.recent_events(10, "no-such-job") == []

    def test_metrics_totals_add_up(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        bounds = (1.0, 10.0)
        empty = store.metrics_totals(bounds)
        assert set(empty.instructions) == {s.value for s in S}
        assert sum(empty.instructions.values()) == 0 and sum(empty.jobs.values()) == 0
        assert (empty.attempts, empty.bytes_sent, empty.transfer_count) == (0, 0, 0)
        assert empty.transfer_buckets == (0, 0)

        Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        claims = {c.server: c for c in Service(store).claim_ready("w1", LEASE, 10, T0 + 1)}
        store.renew_lease(claims["dp1"].instruction_id, "w1", T0 + 30, 500, 500)
        Service(store).mark_installed(claims["dp1"].instruction_id, "w1", T0 + 6)  # 5 s transfer
        Service(store).schedule_retry(claims["dp2"].instruction_id, "w1", "refused", T0 + 2, T0 + 2)
        dp2 = claim_one(store, "w1", T0 + 2)
        store.renew_lease(dp2.instruction_id, "w1", T0 + 30, 200, 500)
        Service(store).mark_installed(dp2.instruction_id, "w1", T0 + 2.5)  # 0.5 s transfer
        t = store.metrics_totals(bounds)
        assert t.instructions["installed"] == 2 and t.instructions["retrying"] == 0
        assert t.jobs["succeeded"] == 1 and t.jobs["active"] == 0
        assert t.attempts == 3
        assert t.bytes_sent == 700
        assert t.events["failure"] == 1 and t.events["installed"] == 2
        assert t.transfer_bounds == bounds
        assert t.transfer_buckets == (1, 2)  # cumulative: <= 1 s, <= 10 s
        assert t.transfer_count == 2 and t.transfer_sum == pytest.approx(5.5)

    # --- removal jobs ---------------------------------------------------------------------

    def test_a_removal_job_supersedes_unfinished_installs_and_ends_removed(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        install = Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        first = claim_one(store, "w1", T0)
        Service(store).mark_installed(first.instruction_id, "w1", T0 + 1)
        holder = first.server
        waiting = "dp2" if holder == "dp1" else "dp1"
        assert Service(store).package_holders(pkg.id) == [
            "dp1",
            "dp2",
        ]  # one holds, one is on the way
        removal = Service(store).add_job(
            pkg.id, ["dp1", "dp2"], None, None, {}, T0 + 2, action="remove"
        )
        job = store.get_job(removal)
        assert job.action == "remove" and job.state is JobState.ACTIVE
        assert [(i.state, i.bytes_total) for i in job.instructions] == [(S.PENDING, 0)] * 2
        old = store.get_job(install)
        assert old.action == "install"
        i = instruction(old, waiting)
        assert i.state is S.CANCELLED
        assert i.last_error == f"superseded by removal job {removal}"
        assert instruction(old, holder).state is S.INSTALLED  # done work is not rewritten
        assert Service(store).package_holders(pkg.id) == [holder]
        claims = Service(store).claim_ready("w2", LEASE, 10, T0 + 3)
        assert sorted(c.server for c in claims) == ["dp1", "dp2"]
        assert {(c.action, c.job_id) for c in claims} == {("remove", removal)}
        for c in claims:
            with pytest.raises(InvalidTransition):  # a removal never ends "installed"
                Service(store).mark_installed(c.instruction_id, "w2", T0 + 4)
            Service(store).mark_removed(c.instruction_id, "w2", T0 + 4)
        job = store.get_job(removal)
        assert [i.state for i in job.instructions] == [S.REMOVED, S.REMOVED]
        assert job.state is JobState.SUCCEEDED
        assert all(i.finished_at == T0 + 4 and i.last_error is None for i in job.instructions)
        assert "app@1.0" not in store.status_matrix()
        assert Service(store).package_holders(pkg.id) == []
        cells = [c for c in store.status_cells() if c.package_ref == "app@1.0"]
        assert {(c.server, c.action, c.state, c.installed) for c in cells} == {
            ("dp1", "remove", S.REMOVED, False),
            ("dp2", "remove", S.REMOVED, False),
        }
        kinds = [e.kind for e in store.events(removal)]
        assert kinds.count("removed") == 2 and kinds[0] == "created"
        assert "remove app@1.0 from dp1, dp2" in store.events(removal)[0].message
        [cancel] = [e for e in store.events(install) if e.kind == "cancelled"]
        assert cancel.server == waiting and removal in cancel.message
        t = store.metrics_totals((1.0,))
        assert t.instructions["removed"] == 2 and t.jobs["succeeded"] == 1
        assert t.transfer_count == 1  # a removal is no transfer
        # an install instruction never ends "removed"
        again = Service(store).add_job(pkg.id, ["dp3"], None, None, {}, T0 + 5)
        c = claim_one(store, "w3", T0 + 5)
        assert c.action == "install" and c.job_id == again
        with pytest.raises(InvalidTransition):
            Service(store).mark_removed(c.instruction_id, "w3", T0 + 6)

    def test_an_install_job_supersedes_an_unfinished_removal(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        removal = Service(store).add_job(
            pkg.id, ["dp1", "dp2"], None, None, {}, T0, action="remove"
        )
        c = claim_one(store, "w1", T0)
        Service(store).schedule_retry(c.instruction_id, "w1", "connection refused", T0 + 60, T0 + 1)
        install = Service(store).add_job(pkg.id, [c.server], None, None, {}, T0 + 2)
        i = instruction(store.get_job(removal), c.server)
        assert i.state is S.CANCELLED
        assert i.last_error == f"superseded by install job {install}"
        other = "dp2" if c.server == "dp1" else "dp1"
        assert instruction(store.get_job(removal), other).state is S.PENDING  # not a target
        assert store.status_matrix()["app@1.0"] == {c.server: "pending"}
        # a removal that fails for good leaves what the server holds as it is
        Service(store).cancel_job(install, T0 + 3)

    def test_an_attempt_under_way_ends_before_the_opposite_intent_runs(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        """A removal is being carried out on dp1 when an install of the same version comes:
        the removal's attempt is not cancelled under the agent's feet, the install waits for
        it, then runs (so dp1 ends up holding the version, as the newest intent says)."""
        removal = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0, action="remove")
        sending = claim_one(store, "w1", T0)
        install = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0 + 1)
        assert instruction(store.get_job(removal), "dp1").state is S.SENDING
        assert Service(store).claim_ready("w2", LEASE, 10, T0 + 2) == [], "not while removing"
        Service(store).mark_removed(sending.instruction_id, "w1", T0 + 3)  # what the agent did
        assert instruction(store.get_job(removal), "dp1").state is S.REMOVED
        after = claim_one(store, "w2", T0 + 4)
        assert (after.job_id, after.action) == (install, "install")

    def test_a_superseded_attempt_that_fails_is_cancelled_not_retried(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        install = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        sending = claim_one(store, "w1", T0)
        removal = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0 + 1, action="remove")
        Service(store).schedule_retry(
            sending.instruction_id, "w1", "connect timeout", T0 + 60, T0 + 2
        )
        i = instruction(store.get_job(install), "dp1")
        assert i.state is S.CANCELLED
        assert i.last_error == f"superseded by removal job {removal}"
        c = claim_one(store, "w2", T0 + 3)
        assert (c.job_id, c.action) == (removal, "remove")

    def test_retrying_a_superseded_job_supersedes_the_newer_one(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        install = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        removal = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0 + 1, action="remove")
        assert instruction(store.get_job(install), "dp1").state is S.CANCELLED
        assert Service(store).retry_job(install, T0 + 2) == 1
        assert instruction(store.get_job(install), "dp1").state is S.PENDING
        i = instruction(store.get_job(removal), "dp1")
        assert i.state is S.CANCELLED, "both intents may not run: the retried one wins"
        assert i.last_error == f"superseded by install job {install}"

    def test_an_operator_retry_makes_a_superseded_install_the_newest_intent_again(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        install = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        sending = claim_one(store, "w1", T0)
        removal = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0 + 1, action="remove")
        Service(store).schedule_retry(sending.instruction_id, "w1", "timeout", T0 + 60, T0 + 2)
        assert instruction(store.get_job(install), "dp1").state is S.CANCELLED
        assert Service(store).retry_job(install, T0 + 3) == 1
        assert instruction(store.get_job(removal), "dp1").state is S.CANCELLED
        again = claim_one(store, "w2", T0 + 4)
        assert again.instruction_id == sending.instruction_id
        Service(store).schedule_retry(again.instruction_id, "w2", "timeout", T0 + 9, T0 + 5)
        i = instruction(store.get_job(install), "dp1")
        assert i.state is S.RETRYING, "the old supersede still cancelled the newest intent"

    def test_a_lease_renewed_or_taken_again_is_not_recovered_from_a_stale_look(
        self, store: Store, job_id: str
    ) -> None:
        c = claim_one(store, "w1", T0, lease=10)
        (stale,) = store.expired_leases(T0 + 11)  # what a recovery saw before ...
        assert store.renew_lease(c.instruction_id, "w1", T0 + 30, 0, 0)  # ... w1 renewed
        moved = store.apply(
            "lease_expired",
            [stale["id"]],
            T0 + 11,
            owner=stale["lease_owner"],
            expired_before=T0 + 11,
            next_attempt_at=T0 + 11,
        )
        assert moved == []
        i = instruction(store.get_job(job_id), c.server)
        assert (i.state, i.attempts) == (S.SENDING, 1)
        assert Service(store).recover_expired_leases(T0 + 11) == 0

    def test_a_removal_is_refused_without_targets_or_package(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        with pytest.raises(NoTargets):
            Service(store).add_job(pkg.id, [], None, None, {}, T0, action="remove")
        with pytest.raises(NotFound):
            Service(store).add_job(pkg.id, ["nobody"], None, None, {}, T0, action="remove")
        with pytest.raises(NotFound):
            Service(store).add_job("0" * 64, ["dp1"], None, None, {}, T0, action="remove")
        with pytest.raises(ValueError):
            Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0, action="upgrade")
        assert store.list_jobs() == []

    def test_no_repair_is_queued_for_a_copy_being_removed(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        Service(store).mark_installed(claim_one(store, "w1", T0).instruction_id, "w1", T0 + 1)
        removal = Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0 + 2, action="remove")
        problems = [{"path": "bin/run", "problem": "altered"}]
        assert Service(store).record_validation("dp1", pkg.id, problems, T0 + 3) is None
        assert len(store.list_jobs()) == 2
        assert instruction(store.get_job(removal), "dp1").state is S.PENDING


class WakeupConformance:
    """Extra guarantees of a store, run by test_store.py against every backend."""

    def test_server_back_during_attempt_makes_the_retry_due_at_once(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        Service(store).record_heartbeat("dp1", "boot-a", None, [], T0, 7.0)
        claim = claim_one(store, "w1", T0 + 1)
        # The server falls silent, then comes back while the attempt is still under way.
        Service(store).record_heartbeat("dp1", "boot-a", None, [], T0 + 20, 7.0)
        Service(store).schedule_retry(
            claim.instruction_id, "w1", "connect timeout", T0 + 80, T0 + 21
        )
        assert store.next_due_at() == T0 + 21

    def test_retry_keeps_its_backoff_when_the_server_did_not_come_back(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        Service(store).add_job(pkg.id, ["dp1"], None, None, {}, T0)
        Service(store).record_heartbeat("dp1", "boot-a", None, [], T0, 7.0)
        claim = claim_one(store, "w1", T0 + 1)
        Service(store).record_heartbeat("dp1", "boot-a", None, [], T0 + 2, 7.0)  # regular heartbeat
        Service(store).schedule_retry(claim.instruction_id, "w1", "disk full", T0 + 80, T0 + 3)
        assert store.next_due_at() == T0 + 80

    def test_release_leases_covers_per_claim_lease_names(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        claim_one(store, "w1:1", T0 + 1)
        claim_one(store, "w10:1", T0 + 1)
        assert Service(store).release_leases("w1", T0 + 2) == 1


class PeersConformance:
    """Labels and the swarm of a package (peer fan-out). Mixed into the conformance suite."""

    def test_labels_round_trip(self, store: Store) -> None:
        Service(store).add_server(
            "dp9", "http://dp9.test:8700", "h9", [], {"site": "berlin", "rack": "4"}, T0
        )
        (s,) = [s for s in store.list_servers() if s.name == "dp9"]
        assert s.labels == (("rack", "4"), ("site", "berlin"))
        assert s.label("site") == "berlin"

    def test_swarm_holds_holders_and_receivers_only(
        self, store: Store, pkg: PackageRecord, servers: list[str]
    ) -> None:
        other = add_package(store, "other", "1.0")
        Service(store).add_job(other.id, ["dp3"], None, None, {}, T0)  # another package: not in
        Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        assert [(m.server, m.holder) for m in store.swarm(pkg.id, T0)] == [
            ("dp1", False),
            ("dp2", False),
        ]
        for c in Service(store).claim_ready("w", LEASE, 10, T0 + 1):
            if c.server == "dp1":
                Service(store).mark_installed(c.instruction_id, c.lease, T0 + 2)
            elif c.server == "dp2":  # backing off: not fetching now, so not a source
                Service(store).schedule_retry(
                    c.instruction_id, c.lease, "connect timeout", T0 + 60, T0 + 2
                )
        assert [(m.server, m.holder) for m in store.swarm(pkg.id, T0 + 3)] == [("dp1", True)]
        # Its retry is due: a receiver again.
        assert [(m.server, m.holder) for m in store.swarm(pkg.id, T0 + 61)] == [
            ("dp1", True),
            ("dp2", False),
        ]
        (dp1,) = [m for m in store.swarm(pkg.id, T0 + 61) if m.server == "dp1"]
        assert dp1.url == "http://dp1.test:8700"
