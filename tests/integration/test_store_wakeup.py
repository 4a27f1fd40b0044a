"""The embedded store wakes whoever waits on it (store/wakeup.py): the despooler when the
command line writes a job, ``job wait`` when the site records the job's end. Real
``packdist`` commands in their own processes, a real despooler, a fake agent over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from packdist.despooler import Despooler, StoreRunner
from packdist.http import new_session
from tests.conftest import run_packdist
from tests.unit.despooler_rig import QUICK_RETRY, TRUSTS_NONE, FakeAgent, Rig, done, rig

pytestmark = pytest.mark.timeout(120)

LOOSE = 5.0  # a bound no busy machine trips; the look it must not wait for is an hour away
NEVER = 3600.0  # seconds: a despooler told to look this seldom on its own


@asynccontextmanager
async def despooling(r: Rig, **settings: Any) -> AsyncIterator[None]:
    """A despooler running on the rig's site for the length of the block."""
    runner = StoreRunner(r.home.store())
    session = new_session(tls=TRUSTS_NONE)
    despooler = Despooler(runner, r.home.signing_key(), session, policy=QUICK_RETRY, **settings)
    task = asyncio.create_task(despooler.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await despooler.shutdown()
        await session.close()
        runner.close()


async def packdist(r: Rig, *args: str) -> Any:
    """``packdist --home … ARGS`` in its own process (off the loop); its result."""
    return await asyncio.to_thread(run_packdist, r.home.root, *args, check=False)


def test_a_job_the_command_line_writes_is_taken_up_without_the_despooler_looking_on_its_own(
    tmp_path: Path,
) -> None:
    """The despooler looks on its own only once an hour here: only the commit it was told
    of (the database file written) can start the job within seconds."""

    async def scenario() -> tuple[Any, float]:
        async with rig(tmp_path, dp1=FakeAgent()) as r, despooling(r, poll=NEVER, safety=NEVER):
            await asyncio.sleep(0.5)  # its first look is done: it waits
            made = await packdist(r, "distribute", "app@1.0", "--to", "dp1", "--json")
            assert made.returncode == 0, made.stderr
            job_id = json.loads(made.stdout)["job"]
            written = time.monotonic()
            while not done(job := r.job(job_id)) and time.monotonic() - written < LOOSE:
                await asyncio.sleep(0.02)
            return job, time.monotonic() - written

    job, took = asyncio.run(scenario())
    (i,) = job.instructions
    assert i.state.value == "installed", (job, took)
    assert took < LOOSE


@pytest.mark.parametrize(
    ("agent", "options", "code", "state"),
    [
        (FakeAgent(install_seconds=1.0), [], 0, "succeeded"),
        (
            FakeAgent(install_seconds=1.0, outcome=lambda pid: {"state": "failed", "error": "x"}),
            ["--max-attempts", "1"],
            1,
            "failed",
        ),
        (FakeAgent(stalled=True), [], 75, "active"),
    ],
    ids=["installed", "failed", "timed-out"],
)
def test_job_wait_returns_when_the_job_ends_with_its_outcome(
    tmp_path: Path, agent: FakeAgent, options: list[str], code: int, state: str
) -> None:
    """``job wait`` started while the job runs returns when it ends (the site's commit
    wakes it), with the job's state and the exit code of the contract; a job that does
    not end is waited for until the timeout (75)."""

    async def scenario() -> tuple[Any, Any, float]:
        async with rig(tmp_path, dp1=agent) as r, despooling(r):
            made = await packdist(r, "distribute", "app@1.0", "--to", "dp1", *options, "--json")
            assert made.returncode == 0, made.stderr
            job_id = json.loads(made.stdout)["job"]
            started = time.monotonic()
            waited = await packdist(r, "job", "wait", job_id, "--timeout", "3", "--json")
            return waited, r.job(job_id), time.monotonic() - started

    waited, job, took = asyncio.run(scenario())
    assert waited.returncode == code, waited.stderr
    assert json.loads(waited.stdout)["state"] == state
    assert job.state.value == state  # what it said is what the store holds
    assert took < 3 + LOOSE
