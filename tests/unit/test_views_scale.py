"""What operators read stays small and quick with a big fleet: 10,000 servers, one job to all
of them, on a real SQLite store.

The overview ships one page of servers (those that need attention first) and the whole
matrix in counts, not every server and cell; ``job show`` pages; ``job list`` gives counts,
not instructions; the event of a job to the fleet counts its servers. Time bounds are loose
(seconds, on the busiest machine); what they guard is history-sized work coming back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from packdist.errors import ErrorKind
from packdist.service import Service
from packdist.site import pages, views
from packdist.site.metrics import TRANSFER_BOUNDS
from packdist.states import InstructionState
from packdist.store import Store, open_store
from tests.unit.store_conformance import T0, add_package

S = InstructionState
FLEET = 10_000
LOOSE = 3.0  # seconds: an order of magnitude above what this takes on a busy 2-core machine
NOW = T0 + 100


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, str]]:
    """10,000 servers, one job to all: 7,000 installed, 800 retrying, 200 failed, 500
    sending, the rest pending; then a job of another package to 10 of them."""
    store = open_store(tmp_path_factory.mktemp("fleet") / "site.db")
    store.init_site("s", T0)
    service = Service(store)
    app, tool = add_package(store, "app"), add_package(store, "tool")
    names = [f"dp{i:05d}" for i in range(FLEET)]
    with store.transaction():
        for name in names:
            service.add_server(name, f"http://{name}.test:8700", f"hash-{name}", [], None, T0)
        for name in names[:9_000]:  # heard from lately: online
            store.record_liveness(name, "boot", 1 << 30, NOW - 1, came_back=False)
    job = service.distribute(app.id, names, T0 + 1)
    with store.transaction():
        claims = service.claim_ready("w", 3600, 8_500, T0 + 2)
        for n, c in enumerate(claims):
            if n < 7_000:
                service.mark_installed(c.instruction_id, c.lease, T0 + 3)
            elif n < 7_800:
                service.schedule_retry(c.instruction_id, c.lease, "timeout", NOW + 600, T0 + 3)
            elif n < 8_000:
                service.mark_failed(c.instruction_id, c.lease, "disk full", T0 + 3, ErrorKind.DISK)
    service.distribute(tool.id, names[:10], T0 + 4)
    yield store, job
    store.close()


def timed(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def test_the_overview_of_10000_servers_ships_one_page_of_servers_and_the_rest_in_counts(
    fleet: tuple[Store, str],
) -> None:
    store, job = fleet

    def build() -> tuple[dict[str, Any], bytes]:
        doc = views.overview(store, NOW)
        doc["html"] = pages.overview_content(doc, NOW)
        return doc, json.dumps(doc).encode()

    (doc, body), seconds = timed(build)
    assert seconds < LOOSE
    assert len(body) < 1_000_000, f"{len(body):,} bytes"
    assert doc["servers_total"] == FLEET
    assert len(doc["servers"]) == views.OVERVIEW_SERVERS
    assert set(doc["matrix"]["app@1.0"]) == {s["name"] for s in doc["servers"]}
    # those that need attention first: every server shown has a cell retrying or failed
    assert all(
        doc["matrix"]["app@1.0"][s["name"]]["word"] in ("retrying", "failed")
        for s in doc["servers"]
    )
    tally = doc["tally"]["app@1.0"]
    assert tally == {"installed": 7_000, "retrying": 800, "failed": 200, "in progress": 2_000}
    assert doc["summary"] == {
        "jobs_active": 2,
        "retrying": 800,
        "failed": 200,
        "installed": 7_000,
        "servers": FLEET,
        "servers_online": 9_000,
    }
    (shown,) = [j for j in doc["jobs"] if j["id"] == job]
    assert shown["targets"] == FLEET
    assert shown["counts"]["installed"] == 7_000
    assert len(shown["instructions"]) == views.OVERVIEW_JOB_ROWS
    assert {i["state"] for i in shown["instructions"]} == {"failed"}  # trouble first
    assert "9,980 more" in doc["html"]


def test_status_of_10000_servers_comes_from_one_row_per_cell(fleet: tuple[Store, str]) -> None:
    store, _ = fleet
    doc, seconds = timed(lambda: views.status(store, NOW))
    assert seconds < LOOSE
    assert len(doc["servers"]) == FLEET
    words = [c["word"] for c in doc["matrix"]["app@1.0"].values()]
    assert words.count("installed") == 7_000 and words.count("failed") == 200
    assert doc["matrix"]["tool@1.0"]["dp00000"]["word"] == "in progress"
    matrix, seconds = timed(store.status_matrix)
    assert seconds < LOOSE
    assert len(matrix["app@1.0"]) == FLEET  # every server has the job: every cell a word


def test_job_list_gives_counts_and_no_instructions(fleet: tuple[Store, str]) -> None:
    store, job = fleet
    jobs, seconds = timed(
        lambda: [views.job_json(j, instructions=False) for j in store.list_jobs()]
    )
    assert seconds < LOOSE
    assert jobs[1]["id"] == job  # newest first
    assert jobs[1]["targets"] == FLEET and jobs[1]["state"] == "active"
    assert jobs[1]["counts"] == {
        "pending": 1_500,
        "sending": 500,
        "installed": 7_000,
        "retrying": 800,
        "failed": 200,
        "cancelled": 0,
        "removed": 0,
    }
    assert "instructions" not in jobs[1]
    assert jobs[0]["targets"] == 10 and jobs[0]["counts"]["pending"] == 10


def test_job_show_lists_every_instruction_in_one_read_and_pages_by_state(
    fleet: tuple[Store, str],
) -> None:
    store, job = fleet
    whole, seconds = timed(lambda: views.job_json(store.get_job(job)))
    assert seconds < LOOSE
    assert len(whole["instructions"]) == FLEET and whole["counts"]["retrying"] == 800
    page = store.get_job(job, [S.RETRYING], limit=50, offset=790)
    assert [i.state for i in page.instructions] == [S.RETRYING] * 10
    assert page.counts["retrying"] == 800 and page.total == FLEET
    names = [i.server for i in store.get_job(job, limit=3, offset=5).instructions]
    assert names == ["dp00005", "dp00006", "dp00007"]


def test_metrics_of_10000_servers_are_read_from_the_summaries(fleet: tuple[Store, str]) -> None:
    store, _ = fleet
    totals, seconds = timed(lambda: store.metrics_totals(TRANSFER_BOUNDS))
    assert seconds < LOOSE
    assert totals.instructions["installed"] == 7_000
    assert totals.instructions["pending"] == 1_500 + 10
    assert totals.jobs == {"active": 2, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert totals.attempts == 8_500
    assert totals.transfer_count == 7_000
    # each install took one second (claimed at T0+2, verified at T0+3)
    assert totals.transfer_buckets[:2] == (0, 7_000)


def test_the_event_of_a_job_to_the_fleet_counts_its_servers(fleet: tuple[Store, str]) -> None:
    store, job = fleet
    created = store.events(job)[0]
    assert created.kind == "created"
    assert created.message == (
        "job created: app@1.0 to 10,000 servers (dp00000, dp00001, dp00002 and 9,997 more)"
    )
    assert len(created.message) < 100
