"""Every listing and report takes ``--json`` and then prints exactly one JSON document on
stdout; human output is readable; errors are one line naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import harness as h
from tests.conftest import run_packdist


@pytest.fixture
def site_with_job(site_home: Path, tmp_path: Path) -> tuple[Path, str]:
    """A site (not serving) with a package, a server nobody answers for, and a job to it."""
    tree = h.make_tree(tmp_path / "src", {"a.bin": 1000}, seed=2)
    run_packdist(site_home, "server", "add", "dp1", "--url", "http://127.0.0.1:9")
    run_packdist(site_home, "package", "create", str(tree), "--name", "app", "--version", "1")
    job = h.run_json(site_home, "distribute", "app@1", "--to", "dp1")["job"]
    return site_home, str(job)


def one_document(home: Path, *args: str, code: int = 0) -> object:
    proc = run_packdist(home, *args, "--json", check=False)
    assert proc.returncode == code, proc
    return json.loads(proc.stdout)  # fails on anything but exactly one document


def test_every_listing_and_report_takes_json(site_with_job: tuple[Path, str]) -> None:
    home, job = site_with_job
    for args in (
        ["server", "list"],
        ["package", "list"],
        ["package", "show", "app@1"],
        ["job", "list"],
        ["job", "show", job],
        ["status"],
        ["events"],
        ["site", "config"],
    ):
        one_document(home, *args)
    doc = one_document(home, "job", "wait", job, "--timeout", "0", code=75)
    assert isinstance(doc, dict) and doc["id"] == job and doc["state"] == "active"
    assert one_document(home, "job", "cancel", job) == {"job": job, "cancelled": 1}
    assert one_document(home, "job", "retry", job) == {"job": job, "queued": 1}
    status = one_document(home, "status")
    assert isinstance(status, dict)
    assert status["packages"] == {"app@1": {"dp1": "pending"}}
    assert status["cells"]["app@1"]["dp1"]["word"] == "in progress"
    assert status["server_details"][0]["name"] == "dp1"
    assert one_document(home, "server", "remove", "dp1") == {
        "name": "dp1",
        "removed": True,
        "cancelled": 1,
    }


def test_status_prints_a_readable_matrix(site_with_job: tuple[Path, str]) -> None:
    home, _ = site_with_job
    out = run_packdist(home, "status").stdout
    lines = out.splitlines()
    assert "package" in lines[1] and "dp1 (offline)" in lines[1], out
    assert "app@1" in lines[2] and "in progress" in lines[2], out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["job", "show", "nosuch"], "no job nosuch"),
        (["job", "wait", "nosuch"], "no job nosuch"),
        (["events", "--job", "nosuch"], "no job nosuch"),
        (["status", "--bogus"], "--bogus"),
        (["site", "config", "--workers", "x"], "--workers"),
    ],
)
def test_errors_are_one_line_naming_the_problem(
    site_with_job: tuple[Path, str], args: list[str], needle: str
) -> None:
    home, _ = site_with_job
    proc = run_packdist(home, *args, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
