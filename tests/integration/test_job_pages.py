"""``job show`` pages through a big job: the real command on a site home with 120 servers.

By default ``--json`` still lists every instruction (CONTRACT.md) and adds the counts per
state; ``--state``, ``--limit`` and ``--offset`` choose a page; the human view prints the
counts and the first page, and says how to see the rest. ``job list`` gives counts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from packdist.service import Service
from packdist.site.home import SiteHome
from tests import harness as h
from tests.conftest import run_packdist

SERVERS = [f"dp{i:03d}" for i in range(120)]


@pytest.fixture(scope="module")
def big_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A site (not serving) with 120 servers and one job to all: 100 installed (claimed and
    settled through the service, as a worker would), 20 pending."""
    root = tmp_path_factory.mktemp("pages")
    home = root / "site"
    run_packdist(home, "site", "init", "--name", "pages")
    tree = h.make_tree(root / "src", {"a.bin": 1000}, seed=3)
    run_packdist(home, "package", "create", str(tree), "--name", "app", "--version", "1")
    store = SiteHome.open(home).store()
    try:
        service = Service(store)
        now = time.time()
        with store.transaction():
            for name in SERVERS:
                service.add_server(name, f"http://127.0.0.1:9/{name}", f"h-{name}", [], {}, now)
        pkg = store.find_package("app", "1")
        assert pkg is not None
        job = service.distribute(pkg.id, SERVERS, now)
        for c in service.claim_ready("w", 600, 100, now):
            service.mark_installed(c.instruction_id, c.lease, now)
    finally:
        store.close()
    return home, job


def show(home: Path, *args: str) -> dict[str, object]:
    doc = json.loads(run_packdist(home, "job", "show", *args, "--json").stdout)
    assert isinstance(doc, dict)
    return doc


def test_job_show_json_lists_every_instruction_with_the_counts_per_state(
    big_job: tuple[Path, str],
) -> None:
    home, job = big_job
    doc = show(home, job)
    instructions = doc["instructions"]
    assert isinstance(instructions, list) and len(instructions) == 120
    assert [i["server"] for i in instructions] == SERVERS
    assert doc["counts"] == {
        "pending": 20,
        "sending": 0,
        "installed": 100,
        "retrying": 0,
        "failed": 0,
        "cancelled": 0,
        "removed": 0,
    }
    assert doc["targets"] == 120 and "page" not in doc


def test_job_show_json_pages_by_state_limit_and_offset(big_job: tuple[Path, str]) -> None:
    home, job = big_job
    pending = show(home, job, "--state", "pending")
    assert {i["state"] for i in pending["instructions"]} == {"pending"}  # type: ignore[union-attr]
    assert len(pending["instructions"]) == 20  # type: ignore[arg-type]
    assert pending["page"] == {"state": "pending", "offset": 0, "limit": None, "matching": 20}
    page = show(home, job, "--limit", "10", "--offset", "115")
    assert [i["server"] for i in page["instructions"]] == SERVERS[115:]  # type: ignore[union-attr]
    assert page["counts"]["installed"] == 100  # type: ignore[index]  # counts stay whole
    assert page["page"] == {"state": None, "offset": 115, "limit": 10, "matching": 120}
    assert show(home, job, "--state", "failed")["instructions"] == []


def test_job_show_prints_the_counts_and_a_first_page_and_says_how_to_see_the_rest(
    big_job: tuple[Path, str],
) -> None:
    home, job = big_job
    out = run_packdist(home, "job", "show", job).stdout
    assert "100/120 installed" in out
    assert "pending 20" in out and "installed 100" in out
    assert "dp049" in out and "dp050" not in out  # the first 50 rows
    assert "70 more; use --limit/--offset" in out
    rest = run_packdist(home, "job", "show", job, "--offset", "110").stdout
    assert "dp110" in rest and "dp119" in rest and "dp109" not in rest and "more;" not in rest


def test_job_show_refuses_an_unknown_state_in_one_line(big_job: tuple[Path, str]) -> None:
    home, job = big_job
    proc = run_packdist(home, "job", "show", job, "--state", "lost", "--json", check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert any("lost" in line and "pending" in line for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr


def test_job_list_gives_each_job_its_counts_without_its_instructions(
    big_job: tuple[Path, str],
) -> None:
    home, job = big_job
    (listed,) = json.loads(run_packdist(home, "job", "list", "--json").stdout)["jobs"]
    assert listed["id"] == job and listed["state"] == "active"
    assert listed["targets"] == 120 and listed["counts"]["installed"] == 100
    assert "instructions" not in listed
    assert "100/120 done" in run_packdist(home, "job", "list").stdout
