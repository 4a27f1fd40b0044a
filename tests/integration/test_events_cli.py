"""``packdist events``: the timeline kept in the site's database, the same the dashboard shows;
``--follow`` prints events as they happen. And ``status``, which says why a cell is not
installed."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h
from tests.conftest import PACKDIST, run_packdist

MB = 1024 * 1024
Make = Callable[..., h.Cluster]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.make_tree(tmp_path_factory.mktemp("events") / "src", {"a.bin": MB}, seed=9)


class Follower:
    """``packdist events --follow --json`` in the background, its lines parsed as they come."""

    def __init__(self, home: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*PACKDIST, "--home", str(home), "events", "--follow", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def until(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"--follow printed only {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(json.loads(line))  # every line one JSON document

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.proc.stderr:
            self.proc.stderr.close()


def test_events_tell_failure_with_cause_retry_and_install(cluster: Make, tree: Path) -> None:
    c = cluster("dp1", "dp2")
    site, dp2 = c.site, c.agents["dp2"]
    dp2.stop()
    site.create_package(tree, "app", "1.0")
    follower = Follower(site.home)
    try:
        job_id = site.distribute("app@1.0", ["dp1", "dp2"])

        def dp2_failed(seen: list[dict[str, Any]]) -> bool:
            return any(e["kind"] == "failure" and e["server"] == "dp2" for e in seen)

        follower.until(dp2_failed, 20)

        # status says what is wrong where, while it is wrong (between two attempts)
        def dp2_cell() -> dict[str, Any] | None:
            cell: dict[str, Any] = site.json("status")["cells"]["app@1.0"]["dp2"]
            return cell if cell["word"] == "retrying" else None

        cell = h.wait_until(dp2_cell, 10, interval=0.05, message="dp2 retrying in status")
        assert "connection refused" in cell["detail"] and "next attempt" in cell["detail"]
        out = site.cli("status").stdout
        assert "dp2" in out and "connection refused" in out, out

        dp2.start()

        def both_installed(seen: list[dict[str, Any]]) -> bool:
            return {e["server"] for e in seen if e["kind"] == "installed"} == {"dp1", "dp2"}

        follower.until(both_installed, 30)
    finally:
        follower.close()
    assert follower.proc.returncode is not None

    events = site.json("events", "--job", job_id)
    assert isinstance(events, list)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "created" and "app@1.0" in events[0]["message"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert all(e["job"] == job_id for e in events)
    dp2_events = [e for e in events if e["server"] == "dp2"]
    failure = next(e for e in dp2_events if e["kind"] == "failure")
    assert "connection refused" in failure["message"] and "retry" in failure["message"]
    assert dp2_events[0]["kind"] == "attempt"
    assert dp2_events[-1]["kind"] == "installed"
    assert kinds.count("installed") == 2
    assert kinds.count("attempt") == sum(i["attempts"] for i in site.job(job_id)["instructions"])
    # what --follow printed for the job is the same timeline
    followed = [e for e in follower.seen if e["job"] == job_id]
    assert followed == events

    # the dashboard's timeline is the same one
    status, body = site.operator_get(f"/api/events?job={job_id}")
    assert status == 200
    assert json.loads(body)["events"] == events

    # human lines: time, kind, job, server, message, one per event
    lines = site.cli("events", "--job", job_id).stdout.splitlines()
    assert len(lines) == len(events)
    failure_line = next(line for line in lines if "failure" in line and "dp2" in line)
    assert f"job {job_id}" in failure_line and "connection refused" in failure_line


def test_events_json_is_one_list_and_limit_keeps_the_newest(site_home: Path, tree: Path) -> None:
    run_packdist(site_home, "server", "add", "dp1", "--url", "http://127.0.0.1:9")
    run_packdist(site_home, "server", "add", "dp2", "--url", "http://127.0.0.1:9")
    run_packdist(site_home, "package", "create", str(tree), "--name", "app", "--version", "1")
    every = json.loads(run_packdist(site_home, "events", "--json").stdout)
    assert [e["kind"] for e in every] == ["server", "server", "package"]
    assert "dp1" in every[0]["message"] and every[0]["server"] == "dp1"
    assert every[0]["at"].endswith("Z")
    newest = json.loads(run_packdist(site_home, "events", "--json", "--limit", "2").stdout)
    assert newest == every[1:]


@pytest.mark.parametrize(
    "args", [["--job", "nosuchjob"], ["--job", "nosuchjob", "--json"], ["--limit", "-1"]]
)
def test_events_errors_are_one_line(site_home: Path, args: list[str]) -> None:
    proc = run_packdist(site_home, "events", *args, check=False)
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_events_without_a_site_says_so(tmp_path: Path) -> None:
    proc = run_packdist(tmp_path / "nothing", "events", check=False)
    assert proc.returncode != 0
    assert "no site" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_every_operator_action_is_an_event_naming_who_did_it(site_home: Path, tree: Path) -> None:
    def as_(who: str, *args: str) -> str:
        return run_packdist(site_home, *args, env={"PACKDIST_OPERATOR": who}).stdout

    as_("alice", "server", "add", "dp1", "--url", "http://127.0.0.1:9")
    as_("alice", "server", "add", "dp2", "--url", "http://127.0.0.1:9")
    as_("alice", "package", "create", str(tree), "--name", "app", "--version", "1")
    job = json.loads(as_("bob", "distribute", "app@1", "--to", "dp1,dp2", "--json"))["job"]
    as_("carol", "job", "cancel", job)
    as_("dave", "job", "retry", job)
    as_("erin", "server", "remove", "dp2")
    events = json.loads(run_packdist(site_home, "events", "--json").stdout)
    by = {(e["kind"], e["by"]) for e in events if e["by"] is not None}
    assert {
        ("server", "alice"),
        ("created", "bob"),
        ("cancelled", "carol"),
        ("retry", "dave"),
        ("server", "erin"),
    } <= by, events
    for e in events:
        if e["by"] is not None:
            assert e["message"].endswith(f" by {e['by']}"), e
