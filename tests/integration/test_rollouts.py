"""``packdist rollout`` through the command line of a real site and agents: the JSON the
contract fixes, a rollout to completion, pause and resume by an operator, and the one-line
refusal of a plan that cannot work (no rollout recorded). Waves on real cables, a pulled
cable and a failing health check: tests/lab/test_rollouts.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import harness as h


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Cluster]:
    root = tmp_path_factory.mktemp("rollouts")
    site = h.make_site(root)
    agents = h.add_agents(site, root, ["dp1", "dp2"])
    site.add_server("dp3", "https://127.0.0.1:9")  # enrolled, never heard from
    c = h.Cluster(site, agents)
    try:
        h.start_all([site, *agents.values()])
        for version in ("1.0", "2.0"):
            src = h.make_tree(root / f"src-{version}", {"a.bin": 50_000}, seed=int(version[0]))
            site.create_package(src, "app", version)
        yield c
    finally:
        c.close()


def _show(c: h.Cluster, rid: str) -> dict[str, Any]:
    doc: dict[str, Any] = c.site.json("rollout", "show", rid)
    return doc


def test_a_rollout_goes_wave_by_wave_to_every_server_and_says_so(cluster: h.Cluster) -> None:
    site = cluster.site
    created = site.json("rollout", "create", "app@1.0", "--to", "dp2,dp1", "--waves", "1,100%")
    rid = created["rollout"]
    assert (created["id"], created["package"], created["state"]) == (rid, "app@1.0", "running")
    assert [w["servers"] for w in created["waves"]] == [["dp2"], ["dp1"]]  # --to: that order
    doc = h.wait_until(
        lambda: (d := _show(cluster, rid))["state"] == "succeeded" and d, 30, message="succeeded"
    )
    assert [w["state"] for w in doc["waves"]] == ["succeeded", "succeeded"]
    assert all(cluster.agents[s].has_package("app", "1.0") for s in ("dp1", "dp2"))
    listed = site.json("rollout", "list")["rollouts"]
    assert [r["id"] for r in listed if r["id"] == rid] == [rid]
    assert "succeeded" in site.cli("rollout", "show", rid).stdout


def test_an_operator_pauses_and_resumes_a_rollout(cluster: h.Cluster) -> None:
    site = cluster.site
    # dp3 never answers: wave 1 stays under way, so the pause lands before wave 2
    rid = site.json(
        "rollout", "create", "app@2.0", "--to", "dp3,dp1", "--waves", "1,100%",
        "--error-threshold", "100",
    )["rollout"]  # fmt: skip
    h.wait_until(lambda: _show(cluster, rid)["waves"][0]["job"], 15, message="wave 1 started")
    assert site.cli("rollout", "pause", rid).stdout.strip() == f"rollout {rid} paused"
    assert _show(cluster, rid)["state"] == "paused"
    assert "is paused: cannot pause it" in _refused(cluster, "rollout", "pause", rid)
    site.cli("rollout", "resume", rid)
    assert _show(cluster, rid)["state"] == "running"
    out = site.cli("rollout", "cancel", rid).stdout
    assert out.startswith(f"rollout {rid} cancelled (1 unfinished instruction")
    doc = _show(cluster, rid)
    assert doc["state"] == "cancelled"
    assert [w["state"] for w in doc["waves"]] == ["cancelled", "cancelled"]


def _refused(c: h.Cluster, *args: str) -> str:
    proc = c.site.cli(*args, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.splitlines()
    return line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--to", "dp1", "--waves", "1,x"), "wave 2 'x' is not a count or a percentage"),
        (("--to", "dp1,dp2", "--waves", "1"), "the waves reach 1 of the 2 servers"),
        (("--to", "dp1,nope", "--waves", "100%"), "unknown server(s): nope"),
        (("--waves", "100%"), "exactly one of --to, --group or --all"),
        (("--all", "--waves", "100%", "--health-check", "bin/x"), "needs --activate"),
        (
            ("--all", "--waves", "100%", "--activate", "--health-check", "/bin/sh"),
            "inside the package",
        ),
        (("--all", "--waves", "100%", "--window", "someday"), "window 'someday'"),
        (("--all", "--waves", "100%", "--error-threshold", "120"), "percentage from 0 to 100"),
    ],
)
def test_a_rollout_that_cannot_work_is_refused_in_one_line_and_records_nothing(
    cluster: h.Cluster, args: tuple[str, ...], words: str
) -> None:
    before = cluster.site.json("rollout", "list")["rollouts"]
    assert words in _refused(cluster, "rollout", "create", "app@1.0", *args)
    assert cluster.site.json("rollout", "list")["rollouts"] == before


def test_an_unknown_rollout_is_named_in_the_refusal(cluster: h.Cluster) -> None:
    assert "no rollout r0000" in _refused(cluster, "rollout", "show", "r0000")


def test_the_rollout_page_shows_its_waves_and_only_an_operator_may_pause_it(
    cluster: h.Cluster,
) -> None:
    from tests.integration.test_operators import add_operator, bearer, call

    site = cluster.site
    rid = site.json(
        "rollout", "create", "app@2.0", "--to", "dp3,dp2", "--waves", "1,100%",
        "--error-threshold", "100",
    )["rollout"]  # fmt: skip
    viewer, ops = add_operator(site, "vera", "viewer"), add_operator(site, "olga", "operator")
    h.wait_until(lambda: _show(cluster, rid)["waves"][0]["job"], 15, message="wave 1 started")
    status, _, page = call(site, "GET", f"/rollouts/{rid}", bearer(viewer))
    assert status == 200
    text = page.decode()
    assert f"Rollout {rid}" in text and "app@2.0" in text and "dp3" in text
    assert "Pause rollout" not in text  # a viewer sees no buttons...
    status, _, _ = call(site, "POST", f"/api/rollouts/{rid}/pause", bearer(viewer))
    assert status == 403  # ...and its request changes nothing
    assert _show(cluster, rid)["state"] == "running"
    status, _, page = call(site, "GET", f"/rollouts/{rid}", bearer(ops))
    assert "Pause rollout" in page.decode() and "Cancel rollout" in page.decode()
    status, _, body = call(site, "POST", f"/api/rollouts/{rid}/pause", bearer(ops))
    assert status == 200, body
    assert _show(cluster, rid)["state"] == "paused"
    status, _, listing = call(site, "GET", "/api/rollouts", bearer(viewer))
    assert status == 200 and rid in listing.decode()
    status, _, page = call(site, "GET", f"/rollouts/{rid}", bearer(viewer))
    assert f"rollout {rid} paused by olga" in page.decode()
    site.cli("rollout", "cancel", rid)


def test_waves_from_a_group_spread_across_locations_and_wait_for_their_window(
    cluster: h.Cluster,
) -> None:
    """Through the real command and the running site: the first wave of a group holds a
    server of each location, and outside its window no wave starts (the site says when)."""
    site = cluster.site
    for n, where in enumerate(["hq", "hq", "hq", "branch"], 1):
        site.add_server(f"lb{n}", "https://127.0.0.1:9", groups=["spread"], labels={"site": where})
    hour = time.gmtime().tm_hour
    closed = f"daily {(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"  # not now
    doc = site.json(
        "rollout", "create", "app@1.0", "--group", "spread", "--waves", "2,100%",
        "--window", closed,
    )  # fmt: skip
    first = set(doc["waves"][0]["servers"])
    assert "lb4" in first and len(first & {"lb1", "lb2", "lb3"}) == 1, doc["waves"]
    shown = h.wait_until(
        lambda: (d := _show(cluster, doc["rollout"]))["why"] and d, 15, message="the window"
    )
    assert shown["why"].startswith("waiting for window, opens "), shown
    assert shown["waves"][0]["job"] is None  # nothing started outside the window
    site.cli("rollout", "cancel", doc["rollout"])
