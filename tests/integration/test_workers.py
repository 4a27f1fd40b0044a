"""Several site workers on one PostgreSQL store: a worker SIGKILLed mid-job and the database
restarted mid-job lose nothing, and no instruction is ever held by two workers at once."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests import harness as h
from tests.pgcluster import Cluster

MB = 1024 * 1024
SERVERS = ("dp1", "dp2", "dp3", "dp4")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers") / "src"
    return h.make_tree(root, {"data/blob.bin": 6 * MB + 5, "lib/small.bin": 70_001}, seed=3)


class Workers:
    """Site workers on one home and one database, and agents that know every worker."""

    def __init__(self, root: Path, url: str, count: int) -> None:
        self.url = url
        home, logs = root / "site", root / "logs"
        first = h.Site("w0", home, logs, site_name="multi")
        doc = first.json("site", "init", "--name", "multi", "--store", url)
        assert doc["site"] == "multi", doc
        self.sites = [first] + [
            h.Site(f"w{n}", home, logs, site_name="multi") for n in range(1, count)
        ]
        urls = ",".join(s.url for s in self.sites)
        self.agents = h.add_agents(first, root, SERVERS, site_url=urls)
        for agent in self.agents.values():  # slow enough that a fault lands mid-transfer
            agent.env["PACKDIST_AGENT_DOWNLOAD_LIMIT"] = "3MB"

    def start(self) -> None:
        h.start_all([*self.sites, *self.agents.values()])
        h.wait_until(
            lambda: all(self.sites[0].server_seen(s) for s in SERVERS), 30, message="enrolled"
        )

    def close(self) -> None:
        for c in [*self.agents.values(), *self.sites]:
            c.close()

    def rows(self, sql: str) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, row_factory=dict_row) as conn:
            return list(conn.execute(sql).fetchall())

    def held_by(self, site: h.Site) -> int:
        """Instructions under way that this worker's process holds."""
        assert site.proc is not None
        rows = self.rows("SELECT lease_owner FROM instructions WHERE state = 'sending'")
        return sum(1 for r in rows if f":{site.proc.pid}:" in (r["lease_owner"] or ""))


@pytest.fixture
def workers(tmp_path: Path, pg_cluster: Cluster) -> Iterator[Workers]:
    made = Workers(tmp_path, pg_cluster.new_database(), count=2)
    try:
        made.start()
        yield made
    finally:
        made.close()


def assert_never_held_twice(w: Workers) -> None:
    """Every attempt ended, and the next one of the same instruction began after it."""
    history = w.rows(
        "SELECT instruction_id, attempt, lease_owner, claimed_at, ended_at, outcome"
        " FROM attempts ORDER BY instruction_id, attempt"
    )
    assert history, "no attempt was recorded"
    by_instruction: dict[int, list[dict[str, Any]]] = {}
    for a in history:
        by_instruction.setdefault(a["instruction_id"], []).append(a)
    for iid, attempts in by_instruction.items():
        assert all(a["ended_at"] is not None for a in attempts), attempts
        for earlier, later in itertools.pairwise(attempts):
            assert earlier["ended_at"] <= later["claimed_at"], (iid, earlier, later)


def test_a_worker_sigkilled_mid_job_loses_nothing_and_no_instruction_is_held_twice(
    workers: Workers, tree: Path
) -> None:
    site = workers.sites[0]
    site.create_package(tree, "app", "1.0")
    job_id = site.distribute("app@1.0", SERVERS)
    victim = h.wait_until(
        lambda: next((s for s in workers.sites if workers.held_by(s) > 0), None),
        30,
        message=lambda: f"a worker holding work: {h.describe_job(site.job(job_id))}",
    )
    victim._signal(signal.SIGKILL)
    assert victim.proc is not None
    victim.proc.wait(10)
    survivor = next(s for s in workers.sites if s is not victim)

    assert survivor.wait_job(job_id, 120) == 0, h.describe_job(survivor.job(job_id))
    doc = survivor.job(job_id)
    assert [i["state"] for i in doc["instructions"]] == ["installed"] * len(SERVERS)
    for agent in workers.agents.values():
        h.assert_same_tree(tree, agent.package_dir("app", "1.0"))
    outcomes = {a["outcome"] for a in workers.rows("SELECT outcome FROM attempts")}
    assert "lease expired" in outcomes, "the killed worker's attempts were not taken over"
    assert_never_held_twice(workers)


def test_the_database_restarting_mid_job_loses_nothing(
    workers: Workers, tree: Path, pg_cluster: Cluster
) -> None:
    site = workers.sites[0]
    site.create_package(tree, "app", "1.0")
    job_id = site.distribute("app@1.0", SERVERS)
    h.wait_until(
        lambda: any(workers.held_by(s) for s in workers.sites),
        30,
        message=lambda: h.describe_job(site.job(job_id)),
    )
    pg_cluster.restart(down_for=2.0)

    assert site.wait_job(job_id, 120) == 0, h.describe_job(site.job(job_id))
    for agent in workers.agents.values():
        h.assert_same_tree(tree, agent.package_dir("app", "1.0"))
    assert all(s.running for s in workers.sites), "a worker died with the database"
    assert_never_held_twice(workers)
