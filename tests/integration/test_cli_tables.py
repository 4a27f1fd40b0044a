"""The command line's tables at 80 columns: a value longer than its column folds onto the
next line rather than being cut with "…" (the full values are in ``--json`` too)."""

from __future__ import annotations

from pathlib import Path

from tests import harness as h
from tests.conftest import run_packdist

LONG_URL = "https://distribution-server-in-the-far-branch-office.example.internal:8701"


def test_a_long_url_in_the_server_list_is_folded_not_cut_at_80_columns(tmp_path: Path) -> None:
    site = h.make_site(tmp_path)
    site.add_server("dp1", LONG_URL, groups=["branch-offices-of-the-northern-region"])
    out = run_packdist(site.home, "server", "list", env={"COLUMNS": "80"}).stdout
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    lines = out.splitlines()
    (head,) = [n for n, line in enumerate(lines) if " url " in line]
    start, end = lines[head].index(" url ") + 1, lines[head].index(" groups ")
    column = "".join(line[start:end].strip() for line in lines[head + 1 :])
    assert LONG_URL in column  # every character of it, folded within its column
    assert site.json("server", "list")["servers"][0]["url"] == LONG_URL


def test_job_list_filters_by_state_package_and_count(tmp_path: Path) -> None:
    site = h.make_site(tmp_path)
    site.add_server("dp1", "https://127.0.0.1:9")
    for name in ("app", "tool"):
        site.create_package(h.make_tree(tmp_path / name, {"a": 10}, seed=len(name)), name, "1")
    first = site.distribute("app@1", ["dp1"])
    site.cli("job", "cancel", first)
    second = site.distribute("tool@1", ["dp1"])
    third = site.distribute("app@1", ["dp1"])

    def ids(*args: str) -> list[str]:
        return [j["id"] for j in site.json("job", "list", *args)["jobs"]]

    assert ids() == [third, second, first]
    assert ids("--state", "cancelled") == [first]
    assert ids("--state", "active", "--limit", "1") == [third]
    assert ids("--package", "tool") == [second]
    assert ids("--package", "app@1") == [third, first]
    assert site.cli("job", "list", "--state", "failed").stdout.strip() == "no such jobs"
    refused = site.cli("job", "list", "--package", "no/such", check=False)
    assert refused.returncode != 0 and len(refused.stderr.splitlines()) == 1
