"""An install's record alone (agent/install_record.py): what the site reads of it."""

from __future__ import annotations

import asyncio
import threading

from packdist.agent.install_record import Install, InstallState, Phase
from packdist.errors import ErrorKind


def test_progress_counts_every_step_from_every_thread() -> None:
    inst = Install("ab" * 32, "app@1", 100)
    threads = [
        threading.Thread(target=lambda: [inst.tick() for _ in range(1000)]) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inst.enter(Phase.FETCH)
    assert inst.progress == 8001
    assert inst.status().phase == "fetch"


def test_the_status_never_reports_more_done_than_the_whole() -> None:
    inst = Install("ab" * 32, "app@1", 100, bytes_present=80, bytes_received=40)
    assert inst.status().bytes_done == 100


def test_an_ended_install_says_why_and_wakes_who_waits() -> None:
    inst = Install("ab" * 32, "app@1", 100)

    async def main() -> None:
        waiter = asyncio.create_task(inst.wait(60))
        await asyncio.sleep(0)
        inst.end(InstallState.FAILED, "disk full: need 2 GB, have 1 GB", ErrorKind.DISK)
        await asyncio.wait_for(waiter, 10)

    asyncio.run(main())
    status = inst.to_json()
    assert status["state"] == "failed" and status["error_kind"] == "disk"
    assert status["error"] == "disk full: need 2 GB, have 1 GB"
    assert inst.ended_at is not None
