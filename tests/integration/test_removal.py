"""Removal end to end: ``packdist package remove`` through real agents over HTTP, with the
same retries as installs, and the agent's cache making a later re-install nearly free.

Each test is named for what it survives or guarantees (tests/harness.py drives the CLI).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h

MB = 1024 * 1024
HEARTBEAT = 2.0  # seconds between two heartbeats of an agent

Make = Callable[..., h.Cluster]


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "src"
    return h.make_tree(root, {"data/blob.bin": 3 * MB + 17, "lib/x/y.bin": 100_003}, seed=7)


def _installed_everywhere(c: h.Cluster, ref: str, servers: list[str]) -> None:
    job_id = c.site.distribute(ref, servers)
    code = c.site.wait_job(job_id, 60)
    assert code == 0, h.describe_job(c.site.job(job_id))


def _remove(site: h.Site, *args: str) -> dict[str, Any]:
    doc: dict[str, Any] = site.json("package", "remove", *args)
    return doc


def test_remove_from_one_server_leaves_the_other_and_the_matrix_follows(
    cluster: Make, small_tree: Path
) -> None:
    c = cluster("dp1", "dp2")
    c.site.create_package(small_tree, "app", "1.0")
    _installed_everywhere(c, "app@1.0", ["dp1", "dp2"])

    doc = _remove(c.site, "app@1.0", "--from", "dp1", "--wait", "--timeout", "60")
    assert doc["action"] == "remove" and doc["state"] == "succeeded", h.describe_job(doc)
    assert [(i["server"], i["state"]) for i in doc["instructions"]] == [("dp1", "removed")]

    assert not c.agents["dp1"].has_package("app", "1.0")
    h.assert_same_tree(small_tree, c.agents["dp2"].package_dir("app", "1.0"))
    status = c.site.json("status")
    assert status["packages"]["app@1.0"] == {"dp2": "installed"}
    assert status["cells"]["app@1.0"]["dp1"]["word"] == "-"
    assert status["cells"]["app@1.0"]["dp2"]["word"] == "installed"
    shown = c.site.json("job", "show", doc["job"])
    assert shown["action"] == "remove" and shown["package"] == "app@1.0"
    assert [j["action"] for j in c.site.jobs()][:1] == ["remove"]
    kinds = [e["kind"] for e in c.site.json("events", "--job", doc["job"])]
    assert kinds[0] == "created" and "removed" in kinds
    # heartbeats later, the agent's own report agrees (nothing brings the copy back)
    time.sleep(2 * HEARTBEAT)
    status = c.site.json("status")
    assert status["packages"]["app@1.0"] == {"dp2": "installed"}
    details = {s["name"]: s for s in status["server_details"]}
    assert details["dp1"]["installed"] == [] and details["dp2"]["installed"] == ["app@1.0"]


def test_server_down_during_removal_is_retried_and_removed_after_restart(
    cluster: Make, small_tree: Path
) -> None:
    c = cluster("dp1", "dp2")
    c.site.create_package(small_tree, "app", "1.0")
    _installed_everywhere(c, "app@1.0", ["dp1", "dp2"])
    c.agents["dp2"].stop()

    doc = _remove(c.site, "app@1.0", "--everywhere")
    job_id = doc["job"]
    assert sorted(i["server"] for i in doc["instructions"]) == ["dp1", "dp2"]

    def dp2_retrying() -> dict[str, Any] | None:
        job = c.site.job(job_id)
        i = h.instruction(job, "dp2")
        done = h.instruction(job, "dp1")["state"] == "removed"
        return job if done and i["state"] == "retrying" and i["last_error"] else None

    job = h.wait_until(dp2_retrying, timeout=30, message="dp2 never retrying with a reason")
    dp2 = h.instruction(job, "dp2")
    assert "connection refused" in dp2["last_error"], h.describe_job(job)
    assert dp2["attempts"] >= 1 and job["state"] == "active"
    assert not c.agents["dp1"].has_package("app", "1.0")
    assert c.agents["dp2"].has_package("app", "1.0")  # nothing happened there yet

    c.agents["dp2"].start()
    assert c.site.wait_job(job_id, 30) == 0, h.describe_job(c.site.job(job_id))
    job = c.site.job(job_id)
    assert job["state"] == "succeeded"
    assert all(i["state"] == "removed" for i in job["instructions"]), h.describe_job(job)
    assert not c.agents["dp2"].has_package("app", "1.0")
    assert c.site.json("status")["packages"]["app@1.0"] == {}


def test_reinstall_after_removal_comes_from_the_agents_cache(
    cluster: Make, small_tree: Path
) -> None:
    c = cluster("dp1")
    c.site.create_package(small_tree, "app", "1.0")
    first = c.site.distribute("app@1.0", ["dp1"])
    assert c.site.wait_job(first, 60) == 0
    assert h.instruction(c.site.job(first), "dp1")["bytes_sent"] > 3 * MB

    removed = _remove(c.site, "app@1.0", "--from", "dp1", "--wait", "--timeout", "60")
    assert removed["state"] == "succeeded", h.describe_job(removed)
    assert not c.agents["dp1"].has_package("app", "1.0")

    again = c.site.distribute("app@1.0", ["dp1"])
    assert c.site.wait_job(again, 60) == 0, h.describe_job(c.site.job(again))
    assert h.instruction(c.site.job(again), "dp1")["bytes_sent"] < 64 * 1024
    h.assert_same_tree(small_tree, c.agents["dp1"].package_dir("app", "1.0"))


def test_bad_removal_requests_say_why_and_create_no_job(tmp_path: Path, small_tree: Path) -> None:
    site = h.make_site(tmp_path)
    site.add_server("dp1", "http://127.0.0.1:9")
    site.create_package(small_tree, "app", "1.0")

    def refused(*args: str) -> str:
        proc = site.cli("package", "remove", *args, check=False)
        assert proc.returncode != 0, proc
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        return lines[0]

    assert "no package nope@1.0" in refused("nope@1.0", "--from", "dp1")
    assert "exactly one of --from, --group or --everywhere" in refused("app@1.0")
    assert "exactly one of" in refused("app@1.0", "--from", "dp1", "--everywhere")
    assert "unknown server(s): dpx" in refused("app@1.0", "--from", "dpx")
    assert "nothing to remove" in refused("app@1.0", "--everywhere")
    assert "group g has no servers" in refused("app@1.0", "--group", "g")
    assert site.jobs() == []
