"""The dashboard's job page pages through a job's instructions, and the front page's job
block shows a few of them (trouble first) with the job's counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from packdist.service import Service
from packdist.site import pages, views
from packdist.states import InstructionState
from packdist.store import Store, open_store
from tests.unit.store_conformance import T0, add_package, add_server

S = InstructionState
NAMES = [f"dp{i:02d}" for i in range(30)]


@pytest.fixture
def job(tmp_path: Path) -> Iterator[tuple[Store, str]]:
    store = open_store(tmp_path / "site.db")
    store.init_site("s", T0)
    pkg = add_package(store, "app")
    for name in NAMES:
        add_server(store, name)
    service = Service(store)
    job_id = service.distribute(pkg.id, NAMES, T0)
    for n, c in enumerate(service.claim_ready("w", 60, 25, T0 + 1)):
        if n < 20:
            service.mark_installed(c.instruction_id, c.lease, T0 + 2)
        else:
            service.schedule_retry(c.instruction_id, c.lease, "refused", T0 + 99, T0 + 2)
    yield store, job_id
    store.close()


def test_the_job_page_shows_one_page_and_links_to_the_next_and_to_each_state(
    job: tuple[Store, str],
) -> None:
    store, job_id = job
    doc = views.job_page(store, job_id, T0 + 3, offset=10, limit=10)
    assert [i["server"] for i in doc["job"]["instructions"]] == NAMES[10:20]
    assert doc["page"] == {"state": None, "offset": 10, "limit": 10, "matching": 30}
    html = pages.job_content(doc, T0 + 3)
    assert "11-20 of 30" in html
    # the page size asked for stays in every link: "previous" and "next" are its neighbours
    assert f'href="/jobs/{job_id}?offset=20&amp;limit=10"' in html
    assert f'href="/jobs/{job_id}?limit=10"' in html
    assert f'href="/jobs/{job_id}?state=retrying&amp;limit=10"' in html
    assert "retrying (5)" in html
    retrying = views.job_page(store, job_id, T0 + 3, state=S.RETRYING)
    assert {i["state"] for i in retrying["job"]["instructions"]} == {"retrying"}
    assert retrying["page"]["matching"] == 5
    assert 'data-state="installed"' not in pages.job_content(retrying, T0 + 3).split("<p")[0]


def test_the_front_page_shows_a_few_instructions_of_a_job_trouble_first(
    job: tuple[Store, str],
) -> None:
    store, job_id = job
    doc = views.overview(store, T0 + 3)
    (shown,) = doc["jobs"]
    assert len(shown["instructions"]) == views.OVERVIEW_JOB_ROWS == 20
    states = [i["state"] for i in shown["instructions"]]
    assert states == ["retrying"] * 5 + ["pending"] * 5 + ["installed"] * 10
    assert shown["counts"]["installed"] == 20 and shown["targets"] == 30
    html = pages.overview_content(doc, T0 + 3)
    assert f'<a href="/jobs/{job_id}">10 more</a>' in html
    assert "20/30 installed" in html
