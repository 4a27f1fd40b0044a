"""The service layer called directly, on a real SQLite store, with a fake clock.

Each test drives one use case the way the CLI, the dashboard or the despooler does, and
checks what an operator then sees: the instructions' states, what the timeline says in
words, and the history of attempts. (The conformance suite checks the store's side of the
same calls against both backends; these pin the rules and their wording.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from packdist.errors import ErrorKind, InvalidTransition, NoTargets, NotFound
from packdist.retry import RetryPolicy
from packdist.service import STOPPING_KINDS, Service
from packdist.service.attempts import LEASE_EXPIRED
from packdist.states import InstructionState
from packdist.store import Store, open_store
from packdist.store.base import Claim, PackageRecord
from tests.unit.store_conformance import T0, add_package, add_server

S = InstructionState
LEASE = 30.0
NO_JITTER = RetryPolicy(initial=4.0, factor=2.0, cap=60.0, jitter=0.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(tmp_path / "site.db")
    store.init_site("s", T0)
    yield store
    store.close()


@pytest.fixture
def service(store: Store) -> Service:
    return Service(store)


@pytest.fixture
def pkg(store: Store) -> PackageRecord:
    return add_package(store, "app", "1.0")


@pytest.fixture
def servers(store: Store) -> list[str]:
    for name in ("dp1", "dp2"):
        add_server(store, name)
    return ["dp1", "dp2"]


def claim(service: Service, now: float, owner: str = "w1") -> Claim:
    (c,) = service.claim_ready(owner, LEASE, 1, now)
    return c


def timeline(store: Store, job_id: str | None = None) -> list[tuple[str, str | None, str]]:
    """What the timeline says (of one job, if given): kind, server and words."""
    events = store.events(job_id)
    # every event carries the time of the use case that wrote it (the fake clock starts at T0)
    assert all(e.at >= T0 for e in events), [(e.kind, e.at) for e in events]
    return [(e.kind, e.server, e.message) for e in events]


def state_of(store: Store, job_id: str, server: str = "dp1") -> Any:
    (i,) = [i for i in store.get_job(job_id).instructions if i.server == server]
    return i


def history(store: Store) -> list[tuple[Any, ...]]:
    return [
        (
            r["attempt"],
            r["lease_owner"],
            r["claimed_at"],
            r["ended_at"],
            r["outcome"],
            r["error_kind"],
        )
        for r in store.attempt_history()
    ]


# --- jobs ---------------------------------------------------------------------------------


def test_a_job_names_each_target_once_and_says_so_in_the_timeline(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp2", "dp1", "dp2"], T0)
    job = store.get_job(job_id)
    assert sorted(i.server for i in job.instructions) == ["dp1", "dp2"]
    assert all(i.state is S.PENDING and i.next_attempt_at == T0 for i in job.instructions)
    assert (job.action, job.max_attempts, job.deadline, job.options) == ("install", None, None, {})
    assert timeline(store, job_id) == [("created", None, "job created: app@1.0 to dp2, dp1")]


def test_a_job_keeps_its_limits_and_flags(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0, 3, 90.0, {"peers": False})
    job = store.get_job(job_id)
    assert (job.max_attempts, job.deadline, job.options) == (3, 90.0, {"peers": False})


def test_a_job_is_refused_without_targets_with_unknown_ones_or_an_unknown_package(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    with pytest.raises(NoTargets, match="at least one target server"):
        service.distribute(pkg.id, [], T0)
    with pytest.raises(NotFound, match=r"^unknown server\(s\): nope, gone$"):
        service.distribute(pkg.id, ["dp1", "nope", "gone"], T0)
    with pytest.raises(NotFound, match=r"^no package with id 000000000000…$"):
        service.distribute("0" * 64, ["dp1"], T0)
    with pytest.raises(ValueError, match="unknown job action 'upgrade'"):
        service.add_job(pkg.id, ["dp1"], None, None, {}, T0, "upgrade")
    assert store.list_jobs() == []
    assert [kind for kind, _, _ in timeline(store)] == ["package", "server", "server"]


def test_a_removal_job_moves_no_bytes_and_says_what_it_removes(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.remove(pkg.id, ["dp1"], T0, max_attempts=2, deadline=30.0)
    job = store.get_job(job_id)
    assert (job.action, job.max_attempts, job.deadline) == ("remove", 2, 30.0)
    assert state_of(store, job_id).bytes_total == 0
    assert timeline(store, job_id) == [("created", None, "job created: remove app@1.0 from dp1")]
    install = service.distribute(pkg.id, ["dp1"], T0 + 1)
    assert state_of(store, install).bytes_total == pkg.size > 0


def test_a_removal_cancels_waiting_installs_and_lets_one_under_way_end_first(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    install = service.distribute(pkg.id, ["dp1", "dp2"], T0)
    under_way = claim(service, T0 + 1)
    assert under_way.server == "dp1"
    removal = service.remove(pkg.id, ["dp1", "dp2"], T0 + 2)
    assert state_of(store, install, "dp2").state is S.CANCELLED
    assert state_of(store, install, "dp2").last_error == f"superseded by removal job {removal}"
    assert state_of(store, install, "dp2").finished_at == T0 + 2
    assert state_of(store, install, "dp1").state is S.SENDING
    assert timeline(store, install)[-2:] == [
        ("cancelled", "dp2", f"superseded by removal job {removal}"),
        (
            "superseded",
            "dp1",
            f"superseded by removal job {removal}; the attempt under way ends first",
        ),
    ]
    # the removal on dp1 waits for the install under way there; dp2's runs at once
    assert [c.server for c in service.claim_ready("w2", LEASE, 5, T0 + 3)] == ["dp2"]
    # the attempt under way fails: it is cancelled, not retried
    service.record_failure(under_way, "connect timeout", ErrorKind.TRANSIENT, NO_JITTER, T0 + 4)
    i = state_of(store, install, "dp1")
    assert (i.state, i.last_error, i.finished_at) == (
        S.CANCELLED,
        f"superseded by removal job {removal}",
        T0 + 4,
    )
    assert timeline(store, install)[-1] == (
        "cancelled",
        "dp1",
        f"superseded by removal job {removal}",
    )
    assert [c.server for c in service.claim_ready("w2", LEASE, 5, T0 + 5)] == ["dp1"]


def test_an_install_supersedes_a_waiting_removal_in_its_own_words(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    removal = service.remove(pkg.id, ["dp1"], T0)
    install = service.distribute(pkg.id, ["dp1"], T0 + 1)
    i = state_of(store, removal)
    assert (i.state, i.last_error) == (S.CANCELLED, f"superseded by install job {install}")
    assert state_of(store, install).state is S.PENDING


def test_a_job_for_the_same_intent_supersedes_nothing(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    first = service.distribute(pkg.id, ["dp1"], T0)
    claim(service, T0 + 1)
    service.distribute(pkg.id, ["dp1"], T0 + 2)
    assert state_of(store, first).state is S.SENDING
    assert [k for k, _, _ in timeline(store, first)] == ["created", "attempt"]


def test_cancelling_a_job_ends_its_unfinished_instructions_and_counts_them(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1", "dp2"], T0)
    c = claim(service, T0 + 1)
    service.mark_installed(c.instruction_id, c.lease, T0 + 2)
    assert service.cancel_job(job_id, T0 + 3) == 1
    i = state_of(store, job_id, "dp2")
    assert (i.state, i.finished_at, i.last_error) == (S.CANCELLED, T0 + 3, None)
    assert state_of(store, job_id, "dp1").state is S.INSTALLED
    assert timeline(store, job_id)[-1] == ("cancelled", None, "job cancelled (1 instruction)")
    with pytest.raises(NotFound):
        service.cancel_job("nosuchjob", T0)


def test_an_operator_retry_revives_ended_work_and_wakes_waiting_retries(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1", "dp2"], T0, max_attempts=1)
    first, second = service.claim_ready("w1", LEASE, 2, T0 + 1)
    service.record_failure(first, "disk busy", ErrorKind.TRANSIENT, NO_JITTER, T0 + 2)
    service.schedule_retry(second.instruction_id, second.lease, "slow", T0 + 500, T0 + 2)
    assert state_of(store, job_id, first.server).state is S.FAILED
    assert service.retry_job(job_id, T0 + 10) == 2
    revived = state_of(store, job_id, first.server)
    assert (revived.state, revived.next_attempt_at, revived.finished_at) == (
        S.PENDING,
        T0 + 10,
        None,
    )
    woken = state_of(store, job_id, second.server)
    assert (woken.state, woken.next_attempt_at) == (S.RETRYING, T0 + 10)
    assert timeline(store, job_id)[-1] == ("retry", None, "operator retry (2 instructions)")
    # the revived one has its attempts again: a failure now gives up after one more
    (again,) = [c for c in service.claim_ready("w1", LEASE, 2, T0 + 11) if c.server == first.server]
    assert (again.attempts, again.attempts_base) == (2, 1)
    assert (
        service.record_failure(again, "disk busy", ErrorKind.TRANSIENT, NO_JITTER, T0 + 12) is False
    )
    assert (
        state_of(store, job_id, first.server).last_error == "disk busy (gave up after 1 attempts)"
    )


def test_an_operator_retry_of_a_superseded_job_supersedes_the_newer_one(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    install = service.distribute(pkg.id, ["dp1"], T0)
    removal = service.remove(pkg.id, ["dp1"], T0 + 1)
    assert service.retry_job(install, T0 + 2) == 1
    assert state_of(store, install).state is S.PENDING
    i = state_of(store, removal)
    assert (i.state, i.last_error) == (S.CANCELLED, f"superseded by install job {install}")


def test_an_operator_retry_with_nothing_to_do_supersedes_nothing(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    install = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1)
    service.mark_installed(c.instruction_id, c.lease, T0 + 2)
    removal = service.remove(pkg.id, ["dp1"], T0 + 3)
    assert service.retry_job(install, T0 + 4) == 0
    assert state_of(store, removal).state is S.PENDING
    assert timeline(store, install)[-1] == ("retry", None, "operator retry (0 instructions)")


def test_a_repair_under_way_is_found_by_its_flag(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    service.distribute(pkg.id, ["dp1"], T0)
    assert service.repairs_under_way("dp1", pkg.id) is None
    repair = service.distribute(pkg.id, ["dp1"], T0, options={"repair": True})
    assert service.repairs_under_way("dp1", pkg.id) == repair
    assert service.repairs_under_way("dp2", pkg.id) is None


# --- attempts -----------------------------------------------------------------------------


def test_a_claim_leases_the_instruction_counts_the_attempt_and_says_so(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0, options={"peers": False})
    assert service.claim_ready("w1", LEASE, 1, T0 - 1) == []  # not due yet
    c = claim(service, T0 + 1)
    assert (c.job_id, c.server, c.package_id, c.package_ref) == (job_id, "dp1", pkg.id, "app@1.0")
    assert (c.attempts, c.attempts_base, c.lease, c.options) == (1, 0, "w1", {"peers": False})
    row = store.instruction(c.instruction_id)
    assert row is not None
    assert (row["state"], row["lease_owner"], row["claimed_at"]) == ("sending", "w1", T0 + 1)
    assert timeline(store, job_id)[-1] == ("attempt", "dp1", "attempt 1 to dp1")
    assert history(store) == [(1, "w1", T0 + 1, None, None, None)]
    assert service.claim_ready("w2", LEASE, 1, T0 + 2) == []  # held
    assert service.recover_expired_leases(T0 + 1 + LEASE) == 0  # for the length of the lease
    assert service.recover_expired_leases(T0 + 1.01 + LEASE) == 1


def test_a_claim_takes_at_most_its_limit(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    service.distribute(pkg.id, ["dp1", "dp2"], T0)
    assert len(service.claim_ready("w1", LEASE, 1, T0)) == 1
    assert len(service.claim_ready("w1", LEASE, 5, T0)) == 1
    assert service.claim_ready("w1", LEASE, 5, T0) == []


def test_a_verified_install_ends_the_instruction_and_records_the_copy(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1)
    service.schedule_retry(c.instruction_id, c.lease, "slow", T0 + 2, T0 + 2, ErrorKind.DISK)
    c = claim(service, T0 + 3)
    service.mark_installed(c.instruction_id, c.lease, T0 + 4)
    i = state_of(store, job_id)
    assert (i.state, i.finished_at, i.last_error, i.error_kind) == (S.INSTALLED, T0 + 4, None, None)
    row = store.instruction(c.instruction_id)
    assert row is not None and row["lease_owner"] is None
    assert store.holdings("dp1") == {pkg.id}
    assert store.status_matrix()["app@1.0"]["dp1"] == "installed"
    assert timeline(store, job_id)[-1] == ("installed", "dp1", "installed on dp1 (verified)")
    assert history(store)[-1] == (2, "w1", T0 + 3, T0 + 4, "installed", None)


def test_only_the_lease_holder_settles_an_attempt(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1)
    for settle in (
        lambda: service.mark_installed(c.instruction_id, "w2", T0 + 2),
        lambda: service.mark_removed(c.instruction_id, "w2", T0 + 2),
        lambda: service.mark_failed(c.instruction_id, "w2", "no", T0 + 2),
        lambda: service.schedule_retry(c.instruction_id, "w2", "no", T0 + 5, T0 + 2),
    ):
        with pytest.raises(InvalidTransition):
            settle()
    assert state_of(store, job_id).state is S.SENDING
    assert store.holdings("dp1") == set()


def test_an_install_cannot_end_removed_nor_a_removal_installed(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    install = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1)
    with pytest.raises(InvalidTransition):
        service.mark_removed(c.instruction_id, c.lease, T0 + 2)
    service.mark_installed(c.instruction_id, c.lease, T0 + 2)
    removal = service.remove(pkg.id, ["dp1"], T0 + 3)
    r = claim(service, T0 + 4)
    service.schedule_retry(r.instruction_id, r.lease, "busy", T0 + 5, T0 + 5, ErrorKind.DISK)
    r = claim(service, T0 + 6)
    with pytest.raises(InvalidTransition):
        service.mark_installed(r.instruction_id, r.lease, T0 + 7)
    service.mark_removed(r.instruction_id, r.lease, T0 + 7)
    i = state_of(store, removal)
    assert (i.state, i.finished_at, i.last_error, i.error_kind) == (S.REMOVED, T0 + 7, None, None)
    assert store.holdings("dp1") == set()
    assert timeline(store, removal)[-1] == ("removed", "dp1", "removed from dp1")
    assert history(store)[-1] == (2, "w1", T0 + 6, T0 + 7, "removed", None)
    assert state_of(store, install).state is S.INSTALLED


@pytest.mark.parametrize("kind", sorted(STOPPING_KINDS))
def test_a_fault_retrying_cannot_mend_stops_the_instruction_at_once(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str], kind: ErrorKind
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1)
    assert service.record_failure(c, "chunk ab12 is corrupt", kind, NO_JITTER, T0 + 2) is False
    i = state_of(store, job_id)
    assert (i.state, i.last_error, i.error_kind, i.finished_at) == (
        S.FAILED,
        "chunk ab12 is corrupt",
        kind.value,
        T0 + 2,
    )
    row = store.instruction(c.instruction_id)
    assert row is not None and row["lease_owner"] is None
    assert timeline(store, job_id)[-1] == ("failed", "dp1", "chunk ab12 is corrupt")
    assert history(store) == [(1, "w1", T0 + 1, T0 + 2, "failed", kind.value)]


@pytest.mark.parametrize("kind", [ErrorKind.TRANSIENT, ErrorKind.AUTH, ErrorKind.DISK])
def test_other_faults_are_retried_after_the_policys_backoff(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str], kind: ErrorKind
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1)
    assert service.record_failure(c, "connect timeout", kind, NO_JITTER, T0 + 2) is True
    i = state_of(store, job_id)
    assert (i.state, i.next_attempt_at, i.last_error, i.error_kind) == (
        S.RETRYING,
        T0 + 2 + 4.0,
        "connect timeout",
        kind.value,
    )
    row = store.instruction(c.instruction_id)
    assert row is not None and row["lease_owner"] is None
    assert timeline(store, job_id)[-1] == ("failure", "dp1", "connect timeout; retry in 4.0s")
    assert history(store) == [(1, "w1", T0 + 1, T0 + 2, "retry", kind.value)]
    # the second failure backs off twice as long
    c = claim(service, T0 + 6)
    service.record_failure(c, "connect timeout", kind, NO_JITTER, T0 + 7)
    assert state_of(store, job_id).next_attempt_at == T0 + 7 + 8.0


def test_giving_up_counts_the_attempts_since_the_last_operator_retry(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0, max_attempts=2)
    c = claim(service, T0 + 1)
    assert service.record_failure(c, "busy", ErrorKind.TRANSIENT, NO_JITTER, T0 + 2) is True
    c = claim(service, T0 + 10)
    assert service.record_failure(c, "busy", ErrorKind.TRANSIENT, NO_JITTER, T0 + 11) is False
    i = state_of(store, job_id)
    assert (i.state, i.attempts, i.error_kind, i.finished_at) == (S.FAILED, 2, "transient", T0 + 11)
    assert i.last_error == "busy (gave up after 2 attempts)"
    assert timeline(store, job_id)[-1] == ("failed", "dp1", "busy (gave up after 2 attempts)")
    service.retry_job(job_id, T0 + 20)
    c = claim(service, T0 + 21)
    assert (c.attempts, c.attempts_base) == (3, 2)
    assert service.record_failure(c, "busy", ErrorKind.TRANSIENT, NO_JITTER, T0 + 22) is True
    assert state_of(store, job_id).state is S.RETRYING


def test_a_deadline_gives_up_when_the_next_attempt_would_come_after_it(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0, deadline=5.0)
    c = claim(service, T0 + 1)
    assert service.record_failure(c, "busy", ErrorKind.TRANSIENT, NO_JITTER, T0 + 1) is True
    c = claim(service, T0 + 5)
    assert service.record_failure(c, "busy", ErrorKind.TRANSIENT, NO_JITTER, T0 + 5) is False
    assert state_of(store, job_id).last_error == "busy (deadline of 5s passed)"


def test_a_server_back_during_the_attempt_makes_its_retry_due_at_once(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0)
    service.record_heartbeat("dp1", "boot-1", None, [], T0, 7.0)
    c = claim(service, T0 + 1)
    service.record_heartbeat("dp1", "boot-1", None, [], T0 + 30, 7.0)  # back after silence
    service.record_failure(c, "connect timeout", ErrorKind.TRANSIENT, NO_JITTER, T0 + 31)
    i = state_of(store, job_id)
    assert (i.state, i.next_attempt_at) == (S.RETRYING, T0 + 31)
    assert timeline(store, job_id)[-1] == (
        "failure",
        "dp1",
        "connect timeout; server came back during the attempt: retry now",
    )


def test_a_server_back_before_the_attempt_began_does_not_hurry_its_retry(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0)
    service.record_heartbeat("dp1", "boot-1", None, [], T0, 7.0)
    c = claim(service, T0 + 1)
    service.record_failure(c, "connect timeout", ErrorKind.TRANSIENT, NO_JITTER, T0 + 2)
    assert state_of(store, job_id).next_attempt_at == T0 + 6


def test_a_failure_reported_without_the_lease_changes_nothing(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1)
    service.cancel_job(job_id, T0 + 2)
    for kind in (ErrorKind.TRANSIENT, ErrorKind.INTEGRITY):
        with pytest.raises(InvalidTransition):
            service.record_failure(c, "late", kind, NO_JITTER, T0 + 3)
    i = state_of(store, job_id)
    assert (i.state, i.last_error) == (S.CANCELLED, None)


def test_an_expired_lease_returns_the_instruction_due_at_once(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1", "dp2"], T0)
    dead = claim(service, T0 + 1)
    alive = claim(service, T0 + 20)
    assert service.recover_expired_leases(T0 + 1 + LEASE) == 0  # not yet: exactly at its end
    assert service.recover_expired_leases(T0 + 2 + LEASE) == 1
    i = state_of(store, job_id, dead.server)
    assert (i.state, i.next_attempt_at, i.last_error, i.error_kind) == (
        S.RETRYING,
        T0 + 2 + LEASE,
        LEASE_EXPIRED,
        "transient",
    )
    row = store.instruction(dead.instruction_id)
    assert row is not None and row["lease_owner"] is None
    assert state_of(store, job_id, alive.server).state is S.SENDING
    assert timeline(store, job_id)[-1] == (
        "recovered",
        dead.server,
        "lease expired; returned to the queue",
    )
    # the attempt ended when its lease did, not when it was noticed
    assert history(store)[0] == (1, "w1", T0 + 1, T0 + 1 + LEASE, "lease expired", "transient")


def test_a_stopping_worker_hands_back_every_lease_it_holds_due_at_once(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1", "dp2"], T0)
    mine = claim(service, T0 + 1, owner="host:1:ab:1")
    other = claim(service, T0 + 1, owner="host:1:abc:2")
    assert service.release_leases("host:1:ab", T0 + 5) == 1
    i = state_of(store, job_id, mine.server)
    assert (i.state, i.next_attempt_at, i.last_error) == (S.RETRYING, T0 + 5, None)
    row = store.instruction(mine.instruction_id)
    assert row is not None and row["lease_owner"] is None
    assert state_of(store, job_id, other.server).state is S.SENDING
    assert timeline(store, job_id)[-1] == (
        "recovered",
        mine.server,
        "site stopping; attempt handed back to the queue",
    )
    assert history(store)[0] == (1, "host:1:ab:1", T0 + 1, T0 + 5, "handed back", None)
    assert service.release_leases("host:1:ab", T0 + 6) == 0


@pytest.mark.parametrize("how", ["lease expired", "handed back"])
def test_a_superseded_attempt_whose_worker_stopped_is_cancelled_not_returned(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str], how: str
) -> None:
    install = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1, owner="host:1:ab:1")
    removal = service.remove(pkg.id, ["dp1"], T0 + 2)
    if how == "lease expired":
        assert service.recover_expired_leases(T0 + 2 + LEASE) == 1
    else:
        assert service.release_leases("host:1:ab", T0 + 3) == 1
    i = state_of(store, install)
    assert (i.state, i.last_error) == (S.CANCELLED, f"superseded by removal job {removal}")
    assert history(store)[0][4] == "superseded"
    assert timeline(store, install)[-1] == (
        "cancelled",
        "dp1",
        f"superseded by removal job {removal}",
    )
    assert c.instruction_id != claim(service, T0 + 40).instruction_id  # the removal runs


def test_a_superseded_attempt_that_gives_up_is_cancelled_too(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    install = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1)
    removal = service.remove(pkg.id, ["dp1"], T0 + 2)
    service.record_failure(c, "corrupt", ErrorKind.INTEGRITY, NO_JITTER, T0 + 3)
    i = state_of(store, install)
    assert (i.state, i.error_kind) == (S.CANCELLED, None)
    assert i.last_error == f"superseded by removal job {removal}"
    assert history(store)[0][3:5] == (T0 + 3, "superseded")


# --- fleet ----------------------------------------------------------------------------------


def test_packages_and_servers_enrolled_are_in_the_timeline(store: Store, service: Service) -> None:
    pkg = add_package(store, "app", "1.0")
    add_server(store, "dp1")
    assert timeline(store) == [
        ("package", None, f"package app@1.0 created ({pkg.id[:12]}…)"),
        ("server", "dp1", "server dp1 added (http://dp1.test:8700)"),
    ]


def test_removing_a_server_cancels_its_unfinished_work_and_says_so(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1", "dp2"], T0)
    assert service.remove_server("dp1", T0 + 1) == 1
    i = state_of(store, job_id)
    assert (i.state, i.last_error, i.finished_at) == (S.CANCELLED, "server removed", T0 + 1)
    assert state_of(store, job_id, "dp2").state is S.PENDING
    assert timeline(store)[-1] == ("server", "dp1", "server dp1 removed")


def test_the_holders_of_a_package_are_its_copies_and_its_unfinished_installs(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    add_server(store, "dp3")
    service.record_heartbeat("dp1", "b", None, [pkg.id], T0, 7.0)
    job_id = service.distribute(pkg.id, ["dp2", "dp3"], T0)
    c = claim(service, T0 + 1)
    service.mark_failed(c.instruction_id, c.lease, "no", T0 + 2)
    assert state_of(store, job_id, c.server).state is S.FAILED
    assert service.package_holders(pkg.id) == sorted({"dp1", "dp2", "dp3"} - {c.server})


def test_a_first_heartbeat_wakes_the_servers_waiting_retries(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1", "dp2"], T0)
    for c in service.claim_ready("w1", LEASE, 2, T0):
        service.schedule_retry(c.instruction_id, c.lease, "down", T0 + 100, T0 + 1)
    assert service.record_heartbeat("dp1", "boot-1", 5000, [], T0 + 2, 7.0) == 1
    assert state_of(store, job_id).next_attempt_at == T0 + 2
    assert state_of(store, job_id, "dp2").next_attempt_at == T0 + 100
    assert timeline(store)[-1] == (
        "server",
        "dp1",
        "server dp1 is online; 1 retrying instruction woken",
    )
    assert store.server("dp1").disk_free == 5000  # type: ignore[union-attr]


def test_a_heartbeat_soon_after_the_last_wakes_nothing(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    service.record_heartbeat("dp1", "boot-1", None, [], T0, 7.0)
    job_id = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0)
    service.schedule_retry(c.instruction_id, c.lease, "down", T0 + 100, T0 + 1)
    events = len(store.events())
    assert service.record_heartbeat("dp1", "boot-1", None, [], T0 + 7, 7.0) == 0  # 7 s: not silent
    assert state_of(store, job_id).next_attempt_at == T0 + 100
    assert len(store.events()) == events
    assert service.record_heartbeat("dp1", "boot-1", None, [], T0 + 14.5, 7.0) == 1


def test_a_restarted_server_is_said_restarted_and_woken(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    service.record_heartbeat("dp1", "boot-1", None, [], T0, 7.0)
    assert service.record_heartbeat("dp1", "boot-2", None, [], T0 + 1, 7.0) == 0
    assert timeline(store)[-1] == ("server", "dp1", "server dp1 is restarted")
    assert service.record_heartbeat("dp1", "boot-2", None, [], T0 + 2, 7.0) == 0
    assert timeline(store)[-1] == ("server", "dp1", "server dp1 is restarted")


def test_a_heartbeat_records_what_the_server_holds_of_this_sites_packages(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    other = add_package(store, "tool", "2.0")
    service.record_heartbeat("dp1", "b", None, [pkg.id, "f" * 64], T0, 7.0)
    assert store.holdings("dp1") == {pkg.id}
    service.record_heartbeat("dp1", "b", None, [other.id], T0 + 1, 7.0)
    assert store.holdings("dp1") == {other.id}
    with pytest.raises(NotFound, match="no server named dp9"):
        service.record_heartbeat("dp9", "b", None, [], T0, 7.0)


def test_a_damaged_copy_queues_one_repair_and_says_what_is_damaged(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    problems = [{"path": "bin/run", "problem": "altered"}]
    repair = service.record_validation("dp1", pkg.id, problems, T0 + 1)
    assert repair is not None
    job = store.get_job(repair)
    assert (job.options, job.action, [i.server for i in job.instructions]) == (
        {"repair": True},
        "install",
        ["dp1"],
    )
    assert store.status_matrix()["app@1.0"]["dp1"] == "corrupt"
    assert timeline(store, repair)[-1] == (
        "corrupt",
        "dp1",
        f"app@1.0 corrupt on dp1: bin/run altered; repair queued (job {repair})",
    )
    assert service.record_validation("dp1", pkg.id, problems, T0 + 2) is None
    assert timeline(store, repair)[-1] == (
        "corrupt",
        "dp1",
        f"app@1.0 corrupt on dp1: bin/run altered; repair job {repair} under way",
    )
    assert len(store.list_jobs()) == 1


def test_a_copy_that_verifies_again_clears_its_mark_once(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    service.record_validation("dp1", pkg.id, [{"path": "bin/run"}], T0)
    assert service.record_validation("dp1", pkg.id, [], T0 + 1) is None
    assert store.status_matrix()["app@1.0"]["dp1"] != "corrupt"
    assert timeline(store)[-1] == ("validated", "dp1", "app@1.0 on dp1 verifies again")
    events = len(store.events())
    service.record_validation("dp1", pkg.id, [], T0 + 2)
    assert len(store.events()) == events


def test_a_damaged_copy_on_its_way_out_is_not_repaired(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    removal = service.remove(pkg.id, ["dp1"], T0)
    problems = [{"path": "bin/run", "problem": "missing"}]
    assert service.record_validation("dp1", pkg.id, problems, T0 + 1) is None
    assert [j.id for j in store.list_jobs()] == [removal]
    assert store.status_matrix().get("app@1.0", {}).get("dp1") != "corrupt"
    assert timeline(store, removal)[-1] == (
        "corrupt",
        "dp1",
        f"app@1.0 corrupt on dp1: bin/run missing; removal job {removal} under way, no repair",
    )


def test_validation_of_an_unknown_package_or_a_removed_server_is_ignored(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    problems = [{"path": "bin/run"}]
    assert service.record_validation("dp1", "0" * 64, problems, T0) is None
    service.remove_server("dp2", T0)
    assert service.record_validation("dp2", pkg.id, problems, T0) is None
    assert store.list_jobs() == []


@pytest.mark.parametrize("fault", ["retried", "stopping", "giving up"])
def test_a_failure_reported_under_a_lease_since_taken_over_changes_nothing(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str], fault: str
) -> None:
    job_id = service.distribute(
        pkg.id, ["dp1"], T0, max_attempts=1 if fault == "giving up" else None
    )
    stale = claim(service, T0 + 1, owner="w1")
    service.recover_expired_leases(T0 + 2 + LEASE)
    claim(service, T0 + 3 + LEASE, owner="w2")
    kind = ErrorKind.INTEGRITY if fault == "stopping" else ErrorKind.TRANSIENT
    with pytest.raises(InvalidTransition):
        service.record_failure(stale, "late", kind, NO_JITTER, T0 + 4 + LEASE)
    i = state_of(store, job_id)
    assert (i.state, i.last_error) == (S.SENDING, LEASE_EXPIRED)
    row = store.instruction(i.id)
    assert row is not None and row["lease_owner"] == "w2"


def test_an_operator_retry_of_a_removal_supersedes_a_newer_install(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    removal = service.remove(pkg.id, ["dp1"], T0)
    install = service.distribute(pkg.id, ["dp1"], T0 + 1)
    assert state_of(store, removal).state is S.CANCELLED
    assert service.retry_job(removal, T0 + 2) == 1
    i = state_of(store, install)
    assert (i.state, i.last_error) == (S.CANCELLED, f"superseded by removal job {removal}")
    assert state_of(store, removal).state is S.PENDING


def test_only_the_lease_holder_ends_a_removal(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    removal = service.remove(pkg.id, ["dp1"], T0)
    r = claim(service, T0 + 1)
    with pytest.raises(InvalidTransition):
        service.mark_removed(r.instruction_id, "w2", T0 + 2)
    assert state_of(store, removal).state is S.SENDING


def test_giving_up_keeps_the_kind_of_the_last_failure(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0, max_attempts=1)
    c = claim(service, T0 + 1)
    assert service.record_failure(c, "no space left", ErrorKind.DISK, NO_JITTER, T0 + 2) is False
    i = state_of(store, job_id)
    assert (i.state, i.error_kind) == (S.FAILED, "disk")


@pytest.mark.parametrize(("due_in", "words"), [(0.25, "retry in 0.2s"), (-3.0, "retry in 0.0s")])
def test_the_timeline_says_when_a_retry_is_due(
    store: Store,
    service: Service,
    pkg: PackageRecord,
    servers: list[str],
    due_in: float,
    words: str,
) -> None:
    job_id = service.distribute(pkg.id, ["dp1"], T0)
    c = claim(service, T0 + 1)
    service.schedule_retry(c.instruction_id, c.lease, "busy", T0 + 2 + due_in, T0 + 2)
    assert timeline(store, job_id)[-1] == ("failure", "dp1", f"busy; {words}")


def test_a_stopping_worker_hands_back_the_rest_after_a_superseded_attempt(
    store: Store, service: Service, pkg: PackageRecord, servers: list[str]
) -> None:
    install = service.distribute(pkg.id, ["dp1", "dp2"], T0)
    first = claim(service, T0 + 1, owner="host:1:ab:1")
    second = claim(service, T0 + 1, owner="host:1:ab:2")
    service.remove(pkg.id, [first.server], T0 + 2)  # supersedes the first attempt only
    assert service.release_leases("host:1:ab", T0 + 3) == 2
    assert state_of(store, install, first.server).state is S.CANCELLED
    assert state_of(store, install, second.server).state is S.RETRYING


def test_a_server_is_enrolled_at_the_time_given_and_says_so_on_the_timeline(
    store: Store, service: Service
) -> None:
    service.add_server("dp9", "http://dp9.test:8701", "hash-9", ["edge"], {"site": "b"}, T0 + 7)
    (dp9,) = [s for s in store.list_servers() if s.name == "dp9"]
    assert (dp9.created_at, dp9.groups, dp9.labels) == (T0 + 7, ("edge",), (("site", "b"),))
    assert ("server", "dp9", "server dp9 added (http://dp9.test:8701)") in timeline(store)
