"""Validation end to end: a real site and agent; an installed tree is damaged on disk,
``packdist validate`` names the damage, the matrix says corrupt, and a repair job that
fetches only the damaged chunks mends it (tests/harness.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h

MB = 1024 * 1024
FILES = {"data/a.bin": 3 * MB + 11, "data/b.bin": 2 * MB + 5, "lib/small.bin": 150_007}
SIZE = sum(FILES.values())


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.make_tree(tmp_path_factory.mktemp("validate") / "src", FILES, seed=23)


def _install(c: h.Cluster, tree: Path) -> Path:
    c.site.create_package(tree, "app", "1.0")
    job_id = c.site.distribute("app@1.0", ["dp1"])
    assert c.site.wait_job(job_id, 60) == 0, h.describe_job(c.site.job(job_id))
    installed = c.agents["dp1"].package_dir("app", "1.0")
    h.assert_same_tree(tree, installed)
    return installed


def _damage(installed: Path) -> None:
    blob = installed / "data" / "a.bin"
    data = bytearray(blob.read_bytes())
    data[2 * MB] ^= 0x01  # one flipped bit, same size, same mtime
    blob.write_bytes(bytes(data))
    (installed / "lib" / "small.bin").unlink()


def _cell(site: h.Site) -> dict[str, Any]:
    doc = site.json("status")
    cell: dict[str, Any] = doc["cells"]["app@1.0"]["dp1"]
    assert doc["packages"]["app@1.0"]["dp1"] == cell["word"], doc
    return cell


def _validate(site: h.Site, *args: str) -> tuple[int, dict[str, Any]]:
    proc = site.cli("validate", *args, "--json", check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_validate_names_damage_marks_corrupt_and_repair_fetches_only_damaged_chunks(
    cluster: Any, tree: Path
) -> None:
    c: h.Cluster = cluster("dp1")
    installed = _install(c, tree)
    code, doc = _validate(c.site)
    assert code == 0, doc
    assert [r["ok"] for s in doc["servers"] for r in s["results"]] == [True], doc

    _damage(installed)
    # With the site stopped nothing repairs the copy behind our back: the matrix can be read.
    c.site.stop()
    code, doc = _validate(c.site, "--server", "dp1", "--package", "app@1.0")
    assert code == 1, doc
    [server] = doc["servers"]
    [result] = server["results"]
    assert not result["ok"] and result["package"] == "app@1.0"
    assert sorted((p["path"], p["problem"]) for p in result["problems"]) == [
        ("data/a.bin", "altered"),
        ("lib/small.bin", "missing"),
    ]
    repair_job = result["repair_job"]
    assert repair_job
    human = c.site.cli("validate", "--server", "dp1", check=False)
    assert human.returncode == 1
    assert "data/a.bin" in human.stdout and "lib/small.bin" in human.stdout
    cell = _cell(c.site)
    assert cell["word"] == "corrupt", cell
    assert "data/a.bin altered" in cell["detail"] and "lib/small.bin missing" in cell["detail"]
    events = c.site.json("events")
    assert any(
        e["kind"] == "corrupt" and "lib/small.bin missing" in e["message"] for e in events
    ), events
    assert len(c.site.jobs()) == 2, "validating twice queued a second repair"

    c.site.start()
    assert c.site.wait_job(repair_job, 60) == 0, h.describe_job(c.site.job(repair_job))
    h.assert_same_tree(tree, installed)
    assert _cell(c.site)["word"] == "installed"
    [instruction] = c.site.job(repair_job)["instructions"]
    assert 0 < instruction["bytes_sent"] < SIZE * 0.5, instruction
    # two damaged spots: the deleted file and the chunk around the flipped bit
    assert instruction["bytes_sent"] <= FILES["lib/small.bin"] + 2 * MB, instruction
    code, doc = _validate(c.site)
    assert code == 0, doc


def test_scheduled_validation_finds_and_repairs_on_its_own(
    cluster: Any, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c: h.Cluster = cluster("dp1")
    installed = _install(c, tree)
    c.site.stop()
    monkeypatch.setenv("PACKDIST_VALIDATION_INTERVAL", "1s")
    c.site.start()
    _damage(installed)

    def repaired() -> bool:
        jobs = c.site.jobs()
        return len(jobs) == 2 and jobs[0]["state"] == "succeeded"

    h.wait_until(repaired, 30, message="a repair job queued by the schedule, succeeded")
    h.assert_same_tree(tree, installed)
    kinds = [e["kind"] for e in c.site.json("events")]
    assert "corrupt" in kinds


def test_validate_names_a_file_added_to_an_installed_tree_and_the_repair_takes_it_away(
    cluster: Any, tree: Path
) -> None:
    c: h.Cluster = cluster("dp1")
    installed = _install(c, tree)
    (installed / "lib" / "planted.sh").write_text("#!/bin/sh\necho hello\n")
    c.site.stop()  # nothing repairs behind our back while we read the report
    code, doc = _validate(c.site, "--server", "dp1")
    assert code == 1, doc
    [result] = doc["servers"][0]["results"]
    assert [(p["path"], p["problem"]) for p in result["problems"]] == [("lib/planted.sh", "added")]
    human = c.site.cli("validate", "--server", "dp1", check=False).stdout
    assert "lib/planted.sh: added" in human, human
    cell = _cell(c.site)
    assert cell["word"] == "corrupt" and "lib/planted.sh added" in cell["detail"], cell
    c.site.start()  # the repair job runs
    job = result["repair_job"]
    assert c.site.wait_job(job, 60) == 0, h.describe_job(c.site.job(job))
    assert not (installed / "lib" / "planted.sh").exists()
    h.assert_same_tree(tree, installed)
    code, doc = _validate(c.site, "--server", "dp1")
    assert code == 0, doc
