"""Active versions end to end: ``packdist activate`` and ``packdist rollback`` through a real
site and agent over HTTPS. The agent switches ``packages/NAME/current`` atomically; a
rollback to a version the server still holds crosses nothing; the active version is not
removed from under its users."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h

MB = 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Cluster]:
    root = tmp_path_factory.mktemp("activation")
    site = h.make_site(root)
    agents = h.add_agents(site, root, ["dp1"])
    site.add_server("dp2", "https://127.0.0.1:9")  # enrolled, never heard from: no agent
    c = h.Cluster(site, agents)
    try:
        h.start_all([site, *agents.values()])
        for version, seed in (("1.0", 1), ("2.0", 2)):
            src = h.make_tree(root / f"src-{version}", {"bin/app": MB + seed}, seed=seed)
            site.create_package(src, "app", version)
        yield c
    finally:
        c.close()


def _current(c: h.Cluster) -> str:
    return os.readlink(c.agents["dp1"].home / "packages" / "app" / "current")


def _run(c: h.Cluster, *args: str) -> dict[str, Any]:
    """The command with ``--wait --json``: its document (exit 1 when the job failed)."""
    proc = c.site.cli(*args, "--wait", "--timeout", "60", "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _sent(doc: dict[str, Any]) -> int:
    return sum(int(i["bytes_sent"]) for i in doc["instructions"])


def test_activating_a_version_installs_it_and_points_current_at_it(cluster: h.Cluster) -> None:
    doc = _run(cluster, "activate", "app@1.0", "--to", "dp1")
    assert doc["state"] == "succeeded", h.describe_job(doc)
    assert _current(cluster) == "1.0"
    assert _sent(doc) > MB  # it was not there: installed first
    doc = _run(cluster, "activate", "app@2.0", "--to", "dp1")
    assert doc["state"] == "succeeded", h.describe_job(doc)
    assert _current(cluster) == "2.0"
    # both versions stay installed; the link is relative, so the home can move
    assert cluster.agents["dp1"].has_package("app", "1.0")
    words = [e["message"] for e in cluster.site.json("events")]
    assert "app@2.0 active on dp1 (was 1.0)" in words, words


def test_a_rollback_to_a_version_still_held_switches_back_at_once_with_no_transfer(
    cluster: h.Cluster,
) -> None:
    if _current(cluster) != "2.0":
        test_activating_a_version_installs_it_and_points_current_at_it(cluster)
    doc = _run(cluster, "rollback", "app", "--to", "dp1")
    (job,) = doc["jobs"]
    assert (job["package"], job["state"]) == ("app@1.0", "succeeded"), h.describe_job(job)
    assert _current(cluster) == "1.0"
    assert _sent(job) == 0
    # and again: back to the version it rolled back from
    doc = _run(cluster, "rollback", "app", "--to", "dp1")
    assert doc["jobs"][0]["package"] == "app@2.0"
    assert _current(cluster) == "2.0"


def test_the_active_version_is_not_removed_from_under_its_users(cluster: h.Cluster) -> None:
    if not os.path.lexists(cluster.agents["dp1"].home / "packages" / "app" / "current"):
        test_activating_a_version_installs_it_and_points_current_at_it(cluster)
    active = _current(cluster)
    doc = _run(cluster, "package", "remove", f"app@{active}", "--from", "dp1")
    (i,) = doc["instructions"]
    assert i["state"] == "failed", h.describe_job(doc)
    assert f"app@{active} is the active version of app on this agent" in i["last_error"]
    assert cluster.agents["dp1"].has_package("app", active)


def _refused(c: h.Cluster, *args: str) -> str:
    proc = c.site.cli(*args, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.splitlines()
    return line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ("rollback", "app", "--to", "dp2"),
            "nothing to roll back (dp2: no version of app is active there)",
        ),
        (("rollback", "nosuch", "--all"), "no package named nosuch"),
        (("activate", "app@9.0", "--to", "dp1"), "no package app@9.0"),
        (("activate", "app@1.0"), "exactly one of --to, --group or --all"),
        (
            ("activate", "app@1.0", "--to", "br/dp1"),
            "activation behind a child site is not supported yet",
        ),
    ],
)
def test_an_activation_that_cannot_work_is_refused_in_one_line_and_makes_no_job(
    cluster: h.Cluster, args: tuple[str, ...], words: str
) -> None:
    before = len(cluster.site.jobs())
    assert words in _refused(cluster, *args)
    assert len(cluster.site.jobs()) == before


def test_no_version_may_be_called_current(cluster: h.Cluster, tmp_path: Path) -> None:
    src = h.make_tree(tmp_path / "src", {"a": 10}, seed=3)
    line = _refused(cluster, "package", "create", str(src), "--name", "app", "--version", "current")
    assert "version 'current' is reserved" in line
