"""The dashboard's pages for a fleet, on a real site over HTTPS: a server's own page (its
heartbeat, labels, groups, what it holds and which version is active, its instructions
with their causes, its timeline), and the timeline folding a server's repeated failures."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests import harness as h
from tests.integration.test_operators import add_operator, bearer, call


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Cluster]:
    root = tmp_path_factory.mktemp("fleet-pages")
    site = h.make_site(root)
    agents = h.add_agents(site, root, ["dp1"])
    site.add_server("dp9", "https://127.0.0.1:9", groups=["edge"])  # never heard from
    c = h.Cluster(site, agents)
    try:
        h.start_all([site, *agents.values()])
        src = h.make_tree(root / "src", {"a.bin": 40_000}, seed=1)
        site.create_package(src, "app", "1.0")
        yield c
    finally:
        c.close()


def test_a_servers_page_shows_what_it_holds_and_its_instructions(cluster: h.Cluster) -> None:
    site = cluster.site
    site.cli("activate", "app@1.0", "--to", "dp1", "--wait", "--timeout", "60")
    viewer = add_operator(site, "vic", "viewer")
    status, _, body = call(site, "GET", "/servers/dp1", bearer(viewer))
    page = body.decode()
    assert status == 200
    assert "Server dp1" in page and "online" in page
    assert "app@1.0" in page and "active" in page
    status, _, body = call(site, "GET", "/api/servers/dp1", bearer(viewer))
    doc = json.loads(body)
    assert (doc["installed"], doc["active"], doc["online"]) == (["app@1.0"], ["app@1.0"], True)
    assert doc["instructions"][0]["state"] == "installed"
    assert any("active on dp1" in e["message"] for e in doc["events"])


def test_an_unreachable_servers_page_says_why_and_folds_its_retries(cluster: h.Cluster) -> None:
    site = cluster.site
    job = site.distribute("app@1.0", ["dp9"])
    h.wait_until(
        lambda: h.instruction(site.job(job), "dp9")["attempts"] >= 3, 60, message="3 attempts"
    )
    viewer = add_operator(site, "val", "viewer")
    status, _, body = call(site, "GET", "/servers/dp9", bearer(viewer))
    page = body.decode()
    assert status == 200 and "offline" in page and "edge" in page
    error = h.instruction(site.job(job), "dp9")["last_error"]
    assert error and "127.0.0.1:9" in page
    assert "earlier attempt" in page and "failed the same way" in page  # folded, not 3 lines
    site.cli("job", "cancel", job)


def test_an_unknown_server_has_a_page_that_says_so(cluster: h.Cluster) -> None:
    viewer = add_operator(cluster.site, "vin", "viewer")
    status, _, body = call(cluster.site, "GET", "/servers/nosuch", bearer(viewer))
    assert status == 404 and "no server named nosuch" in body.decode()


def test_search_finds_servers_packages_and_jobs_and_goes_straight_to_one(
    cluster: h.Cluster,
) -> None:
    site = cluster.site
    viewer = add_operator(site, "vim", "viewer")
    status, _, body = call(site, "GET", "/api/search?q=dp", bearer(viewer))
    doc = json.loads(body)
    assert status == 200 and doc["servers"] == ["dp1", "dp9"]
    status, _, body = call(site, "GET", "/api/search?q=app", bearer(viewer))
    assert json.loads(body)["packages"] == ["app@1.0"]
    status, headers, _ = call(site, "GET", "/search?q=dp9", bearer(viewer))
    assert (status, headers["Location"]) == (303, "/servers/dp9")
    job = site.jobs()[0]["id"]
    status, headers, _ = call(site, "GET", f"/search?q={job}", bearer(viewer))
    assert (status, headers["Location"]) == (303, f"/jobs/{job}")
    status, _, body = call(site, "GET", "/search?q=%25_nothing", bearer(viewer))
    assert status == 200 and "none" in body.decode()  # wildcards taken literally


def test_a_packages_page_counts_its_servers_by_state_and_drills_down_to_them(
    cluster: h.Cluster,
) -> None:
    site = cluster.site
    job = site.distribute("app@1.0", ["dp1", "dp9"])
    h.wait_until(
        lambda: h.instruction(site.job(job), "dp9")["state"] == "retrying", 60, message="retry"
    )
    viewer = add_operator(site, "vip", "viewer")
    status, _, body = call(site, "GET", "/api/packages/app@1.0", bearer(viewer))
    doc = json.loads(body)
    assert status == 200
    assert doc["counts"] == {"installed": 1, "retrying": 1}
    status, _, body = call(site, "GET", "/api/packages/app@1.0?word=retrying", bearer(viewer))
    doc = json.loads(body)
    assert [s["server"] for s in doc["servers"]] == ["dp9"]
    assert "127.0.0.1:9" in doc["servers"][0]["detail"]
    status, _, body = call(site, "GET", "/packages/app@1.0", bearer(viewer))
    assert status == 200 and 'href="/packages/app@1.0?word=retrying"' in body.decode()
    status, _, _ = call(site, "GET", "/packages/app@9.9", bearer(viewer))
    assert status == 404
    site.cli("job", "cancel", job)
