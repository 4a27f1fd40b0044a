"""The despooler driven directly: a real store and site home, a real HTTP fake agent.

Each fake agent (tests/unit/despooler_rig.py) answers the agent protocol (install, status,
cancel, remove) the way a test asks, so the despooler's own rules are tested one by one: what
counts as installed, when it gives up, how it keeps its lease, how a failure's kind decides
what comes next, and that a cancel reaches the agent.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from packdist.auth import ANY_PEER, PEER_CHUNKS_PATH, check_site_assertion
from packdist.core.digest import Digest
from tests.unit.despooler_rig import FakeAgent, done, drive, rig

pytestmark = pytest.mark.timeout(60)


def test_an_installed_report_for_another_package_id_is_not_taken_as_installed(
    tmp_path: Path,
) -> None:
    liar = FakeAgent(outcome=lambda pid: {"state": "installed", "package_id": "f" * 64})

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=liar) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done), r.store.holdings("dp1"), r.package_id

    job, holdings, package_id = asyncio.run(scenario())
    (i,) = job.instructions
    assert i.state.value == "failed"
    assert i.error_kind == "integrity"
    assert i.last_error == f"dp1 reported package id {'f' * 12}…, expected {package_id[:12]}…"
    assert holdings == set()


def test_giving_up_counts_attempts_since_the_operators_last_retry(tmp_path: Path) -> None:
    failing = FakeAgent(outcome=lambda pid: {"state": "failed", "error": "disk busy"})

    async def scenario() -> tuple[Any, Any]:
        async with rig(tmp_path, dp1=failing) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time(), max_attempts=2)
            first = await drive(r, job_id, done)
            # An operator retry gives the instruction its two attempts again, not none.
            r.service().retry_job(job_id, time.time())
            await asyncio.sleep(0.01)
            return first, await drive(
                r, job_id, lambda j: done(j) and j.instructions[0].attempts > 2
            )

    first, second = asyncio.run(scenario())
    assert (first.instructions[0].state.value, first.instructions[0].attempts) == ("failed", 2)
    (i,) = second.instructions
    assert (i.state.value, i.attempts) == ("failed", 4)
    assert "gave up after 2 attempts" in (i.last_error or "")


def test_an_install_longer_than_the_lease_keeps_its_lease(tmp_path: Path) -> None:
    slow = FakeAgent(install_seconds=2.6)  # longer than two leases

    async def scenario() -> tuple[Any, list[str]]:
        async with rig(tmp_path, dp1=slow) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            job = await drive(r, job_id, done, lease=1.2)
            return job, [e.kind for e in r.store.events(job_id)]

    job, kinds = asyncio.run(scenario())
    (i,) = job.instructions
    assert i.state.value == "installed"
    assert i.attempts == 1, "the lease ran out under a live attempt and it was taken again"
    assert "recovered" not in kinds


def _integrity_failure(chunk: str) -> dict[str, Any]:
    return {
        "state": "failed",
        "error": f"hash mismatch in chunk {chunk[:12]}…",
        "error_kind": "integrity",
        "error_chunk": chunk,
    }


def test_a_chunk_damaged_on_the_way_is_retried(tmp_path: Path) -> None:
    chunk: list[str] = []
    agent = FakeAgent(outcome=lambda pid: _integrity_failure(chunk[0]))

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            chunk.append(r.chunks[0])  # intact in the library
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, lambda j: j.instructions[0].attempts >= 2)

    (i,) = asyncio.run(scenario()).instructions
    assert i.state.value != "failed"
    assert i.error_kind == "transient"
    assert "damaged on the way" in (i.last_error or "")


def test_a_chunk_corrupt_in_the_library_stops_the_instruction(tmp_path: Path) -> None:
    chunk: list[str] = []
    agent = FakeAgent(outcome=lambda pid: _integrity_failure(chunk[0]))

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            victim = r.home.library.path(Digest.parse(r.chunks[0]))
            victim.chmod(0o644)
            victim.write_bytes(b"not the chunk")
            chunk.append(r.chunks[0])
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done)

    (i,) = asyncio.run(scenario()).instructions
    assert (i.state.value, i.attempts, i.error_kind) == ("failed", 1, "integrity")
    assert "is corrupt in the library" in (i.last_error or "")


def test_a_cancelled_instruction_stops_its_install_on_the_agent(tmp_path: Path) -> None:
    slow = FakeAgent(install_seconds=30.0)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=slow) as r:
            service = r.service()
            job_id = service.distribute(r.package_id, ["dp1"], time.time())
            asked: list[bool] = []

            def cancelled_there(job: Any) -> bool:
                if not asked and job.instructions[0].state.value == "sending" and slow.installs:
                    service.cancel_job(job_id, time.time())
                    asked.append(True)
                return bool(slow.cancels)

            await drive(r, job_id, cancelled_there)
            return r.package_id, r.job(job_id)

    package_id, job = asyncio.run(scenario())
    assert slow.cancels == [package_id]
    assert job.instructions[0].state.value == "cancelled"


def test_an_install_taken_over_by_another_worker_is_not_cancelled_on_the_agent(
    tmp_path: Path,
) -> None:
    slow = FakeAgent(install_seconds=30.0)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=slow) as r:
            service = r.service()
            job_id = service.distribute(r.package_id, ["dp1"], time.time())

            taken: list[float] = []

            def taken_over(job: Any) -> bool:
                if not taken and job.instructions[0].state.value == "sending" and slow.installs:
                    # the lease runs out under this worker; another one claims it
                    later = time.time() + 60
                    service.recover_expired_leases(later)
                    if service.claim_ready("other-worker", 600, 1, later):
                        taken.append(time.monotonic())
                # the worker runs on longer than a lease renewal: it notices the loss
                return bool(taken) and time.monotonic() - taken[0] > 2.5

            await drive(r, job_id, taken_over)
            return r.job(job_id)

    job = asyncio.run(scenario())
    assert job.instructions[0].state.value == "sending"
    assert slow.cancels == [], "a worker that lost its lease cancelled the new holder's install"


def test_hung_servers_never_hold_every_slot_while_a_healthy_one_waits(tmp_path: Path) -> None:
    hung = {f"hung{n}": FakeAgent(hangs=True) for n in range(6)}
    healthy = FakeAgent()

    async def scenario() -> tuple[Any, float, int]:
        async with rig(tmp_path, **hung, ok=healthy) as r:
            service = r.service()
            # the healthy server is heard from; the hung ones never were, and are due first
            service.record_heartbeat("ok", "boot", None, [], time.time(), 7.0)
            first = service.distribute(r.package_id, sorted(hung), time.time() - 1)
            job_id = service.distribute(r.package_id, ["ok"], time.time())
            started = time.monotonic()
            most = [0]

            def healthy_installed(job: Any) -> bool:
                held = [i for i in r.job(first).instructions if i.state.value == "sending"]
                most[0] = max(most[0], len(held))
                return bool(job.instructions[0].state.value == "installed")

            job = await drive(r, job_id, healthy_installed, max_in_flight=4)
            sent = most[0]
            return job, time.monotonic() - started, sent

    job, took, hung_sending = asyncio.run(scenario())
    assert job.instructions[0].state.value == "installed"
    # the hung servers' calls time out after 10 s or more: the healthy one did not wait
    assert took < 5, f"the healthy server waited {took:.1f}s behind hung ones"
    assert hung_sending == 1, "servers not heard from took other than their share of slots"


def test_an_install_refused_while_a_removal_runs_is_retried_not_given_up() -> None:
    from packdist.errors import Busy
    from packdist.http import status_of
    from packdist.service import STOPPING_KINDS

    busy = Busy("app@1.0 is being removed on this agent; install refused until it ends")
    assert status_of(busy) == 409
    assert busy.kind not in STOPPING_KINDS


def test_a_chunk_that_will_not_decode_is_named_so_the_library_is_checked() -> None:
    from packdist.core.codec import Encoding, decode
    from packdist.errors import DecodeError

    digest = Digest.of(b"x" * 100)
    with pytest.raises(DecodeError) as caught:
        decode(Encoding.ZSTD, b"not zstd at all", 100, digest)
    assert caught.value.digest == digest.hex


# --- what the agent is told, and what its answers lead to -----------------------------------


def attempt_outcomes(r: Any) -> list[tuple[int, str | None, str | None]]:
    return [(a["attempt"], a["outcome"], a["error_kind"]) for a in r.store.attempt_history()]


def test_a_removal_tells_the_agent_which_version_and_ends_removed(tmp_path: Path) -> None:
    agent = FakeAgent()

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            r.service().record_heartbeat("dp1", "b", None, [r.package_id], time.time(), 7.0)
            job_id = r.service().remove(r.package_id, ["dp1"], time.time())
            job = await drive(r, job_id, done)
            return r.package_id, job, r.store.holdings("dp1"), attempt_outcomes(r)

    package_id, job, holdings, attempts = asyncio.run(scenario())
    assert agent.removals == [{"package_id": package_id, "package": "app@1.0"}]
    assert agent.installs == []
    assert job.instructions[0].state.value == "removed"
    assert holdings == set()
    assert attempts == [(1, "removed", None)]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"state": "busy", "error": "installing that version"}, "installing that version"),
        ({"state": "busy"}, "dp1 did not confirm the removal"),
    ],
)
def test_a_removal_the_agent_does_not_confirm_is_retried_with_its_reason(
    tmp_path: Path, answer: dict[str, Any], error: str
) -> None:
    agent = FakeAgent(removal=lambda: answer)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().remove(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, lambda j: j.instructions[0].attempts >= 2)

    (i,) = asyncio.run(scenario()).instructions
    assert i.state.value in ("retrying", "sending")
    assert (i.last_error, i.error_kind) == (error, "transient")


def test_an_install_sends_no_repair_flag_and_no_peers_when_there_are_none(tmp_path: Path) -> None:
    agent = FakeAgent()  # it reports no byte counts either

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done)

    job = asyncio.run(scenario())
    (i,) = job.instructions
    (body,) = agent.bodies
    assert sorted(body) == ["job", "manifest", "signature"]
    assert body["job"] == job.id  # the job asking: its later attempts join the install
    assert (i.bytes_sent, i.bytes_total, i.bytes_from_peers, i.bytes_done) == (0, 0, 0, 0)


def test_a_repair_job_asks_the_agent_to_repair_again_after_it_forgot(tmp_path: Path) -> None:
    agent = FakeAgent(install_seconds=0.3, forget=1)

    async def scenario() -> None:
        async with rig(tmp_path, dp1=agent) as r:
            options = {"repair": True}
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time(), options=options)
            await drive(r, job_id, done)

    asyncio.run(scenario())
    assert [b.get("repair") for b in agent.bodies] == [True, True]


@pytest.mark.parametrize("peers", ["on", "off for the job", "off for the site"])
def test_an_install_is_told_of_a_live_holder_unless_peers_are_off(
    tmp_path: Path, peers: str
) -> None:
    from packdist.despooler import PeerSettings

    receiver, holder = FakeAgent(), FakeAgent()

    site_key: list[Any] = []

    async def scenario() -> str:
        async with rig(tmp_path, dp1=receiver, dp2=holder) as r:
            site_key.append(r.home.signing_key().public)
            now = time.time()
            r.service().record_heartbeat("dp1", "b", None, [], now, 7.0)
            r.service().record_heartbeat("dp2", "b", None, [r.package_id], now, 7.0)
            options = {"peers": False} if peers == "off for the job" else {}
            job_id = r.service().distribute(r.package_id, ["dp1"], now, options=options)
            site = PeerSettings(enabled=peers != "off for the site")
            await drive(r, job_id, done, peers=site)
            return r.package_id

    package_id = asyncio.run(scenario())
    offered = receiver.bodies[0].get("peers", [])
    assert [p["name"] for p in offered] == (["dp2"] if peers == "on" else [])
    if offered:  # dp2 lets dp1 fetch this package's chunks with it
        token = receiver.bodies[0]["peer_token"]
        claims = check_site_assertion(
            token, site_key[0], ("dp2", ANY_PEER), "POST", PEER_CHUNKS_PATH
        )
        assert (claims["sub"], claims["pkg"]) == ("dp1", package_id)


def test_the_agents_progress_is_recorded_with_the_install(tmp_path: Path) -> None:
    def with_bytes(pid: str) -> dict[str, Any]:
        counts = {"bytes_wire": 300, "bytes_total": 45000, "bytes_from_peers": 100}
        return {**installed_report(pid), **counts, "bytes_done": 45000}

    agent = FakeAgent(outcome=with_bytes)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done)

    (i,) = asyncio.run(scenario()).instructions
    assert i.state.value == "installed"
    assert (i.bytes_sent, i.bytes_total, i.bytes_from_peers, i.bytes_done) == (
        300,
        45000,
        100,
        45000,
    )


def installed_report(pid: str) -> dict[str, Any]:
    return {"state": "installed", "package_id": pid}


def test_an_agent_that_forgot_the_install_is_asked_again_and_it_completes(
    tmp_path: Path,
) -> None:
    agent = FakeAgent(install_seconds=0.3, forget=1)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done)

    (i,) = asyncio.run(scenario()).instructions
    assert (i.state.value, i.attempts) == ("installed", 1)
    assert len(agent.installs) == 2


def test_an_install_stopped_on_the_agent_is_retried(tmp_path: Path) -> None:
    agent = FakeAgent(outcome=lambda pid: {"state": "cancelled", "package_id": pid})

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, lambda j: j.instructions[0].attempts >= 2)

    (i,) = asyncio.run(scenario()).instructions
    assert i.state.value != "failed"
    assert (i.last_error, i.error_kind) == (
        "the install was stopped on dp1; trying again",
        "transient",
    )


@pytest.mark.parametrize(
    ("reported", "state", "kind"),
    [
        ({"error": "no space left", "error_kind": "disk"}, "retrying", "disk"),
        ({"error": "bad manifest", "error_kind": "refused"}, "failed", "refused"),
        # content that failed on the agent, no chunk named: a fresh attempt re-verifies
        ({"error": "hash mismatch", "error_kind": "integrity"}, "retrying", "transient"),
        ({"error": "odd", "error_kind": "martian"}, "retrying", "transient"),
        ({}, "retrying", "transient"),
    ],
)
def test_a_failure_the_agent_reports_keeps_its_words_and_kind(
    tmp_path: Path, reported: dict[str, Any], state: str, kind: str
) -> None:
    agent = FakeAgent(outcome=lambda pid: {"state": "failed", **reported})

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, lambda j: done(j) or j.instructions[0].attempts >= 2)

    (i,) = asyncio.run(scenario()).instructions
    if state == "retrying":
        assert i.state.value in ("retrying", "sending")
    else:
        assert (i.state.value, i.attempts) == (state, 1)
    assert i.error_kind == kind
    assert i.last_error == reported.get("error", "install failed on the agent")


@pytest.mark.parametrize("chunk", ["known", "not a digest"])
def test_an_integrity_fault_the_library_cannot_judge_stops_with_the_agents_words(
    tmp_path: Path, chunk: str
) -> None:
    """Without the library (or a chunk name it can read), nothing says the site's copy is
    intact: the fault is taken as an integrity fault and the instruction stops."""
    names: list[str] = []
    agent = FakeAgent(
        outcome=lambda pid: {
            "state": "failed",
            "error": "hash mismatch",
            "error_kind": "integrity",
            "error_chunk": names[0],
        }
    )

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            names.append(r.chunks[0] if chunk == "known" else "zz")
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done, with_library=chunk != "known")

    (i,) = asyncio.run(scenario()).instructions
    assert (i.state.value, i.attempts, i.error_kind, i.last_error) == (
        "failed",
        1,
        "integrity",
        "hash mismatch",
    )


def test_a_bug_in_an_attempt_leaves_a_visible_retried_instruction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packdist.service import Service

    agent = FakeAgent()
    real = Service.mark_installed
    calls = []

    def buggy_once(self: Service, *args: Any) -> None:  # a bug, injected once
        calls.append(args)
        if len(calls) == 1:
            raise ValueError("a bug")
        real(self, *args)

    monkeypatch.setattr(Service, "mark_installed", buggy_once)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done), attempt_outcomes(r)

    job, attempts = asyncio.run(scenario())
    (i,) = job.instructions
    assert (i.state.value, i.attempts) == ("installed", 2)
    assert attempts[0] == (1, "retry", "internal")


def test_a_malformed_status_from_an_agent_is_retried_not_given_up(tmp_path: Path) -> None:
    agent = FakeAgent(outcome=lambda pid: ["not", "a", "status"])  # type: ignore[arg-type,return-value]

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, lambda j: j.instructions[0].attempts >= 2)

    (i,) = asyncio.run(scenario()).instructions
    assert i.state.value != "failed"
    assert i.error_kind == "transient"
    assert "malformed" in (i.last_error or "")


def test_a_stopping_despooler_hands_its_attempt_back_due_at_once(tmp_path: Path) -> None:
    agent = FakeAgent(install_seconds=30.0)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            await drive(r, job_id, lambda j: bool(agent.installs))
            return r.job(job_id), attempt_outcomes(r), time.time()

    job, attempts, stopped = asyncio.run(scenario())
    (i,) = job.instructions
    assert (i.state.value, i.attempts) == ("retrying", 1)
    assert i.next_attempt_at <= stopped
    assert attempts == [(1, "handed back", None)]


def test_an_older_agent_counting_chunk_bytes_has_them_recorded(tmp_path: Path) -> None:
    agent = FakeAgent(outcome=lambda pid: {**installed_report(pid), "bytes_received": 700})

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done)

    (i,) = asyncio.run(scenario()).instructions
    assert (i.state.value, i.bytes_sent) == ("installed", 700)


def test_the_instruction_of_a_worker_that_died_is_carried_on(tmp_path: Path) -> None:
    agent = FakeAgent()

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            r.service().claim_ready("dead-worker:1", 0.5, 1, time.time())  # then it died
            return await drive(r, job_id, done, lease=1.0), attempt_outcomes(r)

    job, attempts = asyncio.run(scenario())
    (i,) = job.instructions
    assert (i.state.value, i.attempts) == ("installed", 2)
    assert attempts == [(1, "lease expired", "transient"), (2, "installed", None)]


def test_a_worker_runs_no_more_attempts_at_once_than_it_may(tmp_path: Path) -> None:
    first, second = FakeAgent(install_seconds=0.4), FakeAgent(install_seconds=0.4)

    async def scenario() -> None:
        async with rig(tmp_path, dp1=first, dp2=second) as r:
            job_id = r.service().distribute(r.package_id, ["dp1", "dp2"], time.time())
            await drive(r, job_id, done, max_in_flight=1)

    asyncio.run(scenario())
    (a,) = first.started.values()
    (b,) = second.started.values()
    assert abs(a - b) >= 0.4, "the second install began while the first one ran"


def test_an_install_that_makes_no_progress_is_given_up_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import packdist.despooler

    monkeypatch.setattr(packdist.despooler, "STALL_LIMIT", 1.0)
    agent = FakeAgent(stalled=True)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, lambda j: j.instructions[0].attempts >= 2)

    (i,) = asyncio.run(scenario()).instructions
    assert (i.last_error, i.error_kind) == ("install on dp1 made no progress for 1s", "transient")


def test_an_install_that_keeps_moving_is_not_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import packdist.despooler

    monkeypatch.setattr(packdist.despooler, "STALL_LIMIT", 1.0)
    agent = FakeAgent(install_seconds=2.5)  # its progress moves at every answer

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            return await drive(r, job_id, done)

    (i,) = asyncio.run(scenario()).instructions
    assert (i.state.value, i.attempts) == ("installed", 1)


def test_a_removal_that_ends_after_its_lease_was_taken_over_does_not_end_it(
    tmp_path: Path,
) -> None:
    agent = FakeAgent(removal_seconds=1.0)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            service = r.service()
            job_id = service.remove(r.package_id, ["dp1"], time.time())
            taken: list[float] = []

            def taken_over(job: Any) -> bool:
                if not taken and agent.removals:
                    later = time.time() + 60  # this worker's lease ran out; another claims it
                    service.recover_expired_leases(later)
                    if service.claim_ready("other-worker", 600, 1, later):
                        taken.append(time.monotonic())
                return bool(taken) and time.monotonic() - taken[0] > 1.5  # the answer came

            await drive(r, job_id, taken_over)
            (i,) = r.job(job_id).instructions
            return i, r.store.instruction(i.id)

    i, row = asyncio.run(scenario())
    assert (i.state.value, row["lease_owner"]) == ("sending", "other-worker")


def test_a_renewed_lease_still_runs_out_when_its_worker_stops(tmp_path: Path) -> None:
    slow = FakeAgent(install_seconds=30.0)

    async def scenario() -> int:
        async with rig(tmp_path, dp1=slow) as r:
            job_id = r.service().distribute(r.package_id, ["dp1"], time.time())
            started: list[float] = []
            recovered: list[int] = []

            def renewed_then_gone(job: Any) -> bool:
                if not started and slow.installs:
                    started.append(time.monotonic())
                if started and time.monotonic() - started[0] > 1.0:  # renewed twice by now
                    # as if the worker had died now: its lease ends within one lease
                    recovered.append(r.service().recover_expired_leases(time.time() + 1.3))
                    return True
                return False

            await drive(r, job_id, renewed_then_gone, lease=1.2)
            return recovered[0]

    assert asyncio.run(scenario()) == 1


def test_an_install_that_ends_after_its_lease_was_taken_over_does_not_end_it(
    tmp_path: Path,
) -> None:
    agent = FakeAgent(install_seconds=1.0)

    async def scenario() -> Any:
        async with rig(tmp_path, dp1=agent) as r:
            service = r.service()
            job_id = service.distribute(r.package_id, ["dp1"], time.time())
            taken: list[float] = []

            def taken_over(job: Any) -> bool:
                if not taken and agent.installs:
                    later = time.time() + 60  # this worker's lease ran out; another claims it
                    service.recover_expired_leases(later)
                    if service.claim_ready("other-worker", 600, 1, later):
                        taken.append(time.monotonic())
                return bool(taken) and time.monotonic() - taken[0] > 1.5  # "installed" came

            await drive(r, job_id, taken_over)
            (i,) = r.job(job_id).instructions
            return i, r.store.instruction(i.id)

    i, row = asyncio.run(scenario())
    assert (i.state.value, row["lease_owner"]) == ("sending", "other-worker")
