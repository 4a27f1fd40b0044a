"""The dashboard's pages for a fleet, on a real site over HTTPS: a server's own page (its
heartbeat, labels, groups, what it holds and which version is active, its instructions
with their causes, its timeline), and the timeline folding a server's repeated failures."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

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


@pytest.fixture(scope="module")
def viewer(cluster: h.Cluster) -> str:
    """One viewer's password for the module (each new one costs a password check, and the
    site limits those per address)."""
    return add_operator(cluster.site, "vic", "viewer")


@pytest.fixture(scope="module")
def ops(cluster: h.Cluster) -> str:
    return add_operator(cluster.site, "oda", "operator")


def test_a_servers_page_shows_what_it_holds_and_its_instructions(
    cluster: h.Cluster, viewer: str
) -> None:
    site = cluster.site
    site.cli("activate", "app@1.0", "--to", "dp1", "--wait", "--timeout", "60")
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


def test_an_unreachable_servers_page_says_why_and_folds_its_retries(
    cluster: h.Cluster, viewer: str
) -> None:
    site = cluster.site
    job = site.distribute("app@1.0", ["dp9"])
    h.wait_until(
        lambda: h.instruction(site.job(job), "dp9")["attempts"] >= 3, 60, message="3 attempts"
    )
    status, _, body = call(site, "GET", "/servers/dp9", bearer(viewer))
    page = body.decode()
    assert status == 200 and "offline" in page and "edge" in page
    error = h.instruction(site.job(job), "dp9")["last_error"]
    assert error and "127.0.0.1:9" in page
    assert "earlier attempt" in page and "failed the same way" in page  # folded, not 3 lines
    site.cli("job", "cancel", job)


def test_an_unknown_server_has_a_page_that_says_so(cluster: h.Cluster, viewer: str) -> None:
    status, _, body = call(cluster.site, "GET", "/servers/nosuch", bearer(viewer))
    assert status == 404 and "no server named nosuch" in body.decode()


def test_search_finds_servers_packages_and_jobs_and_goes_straight_to_one(
    cluster: h.Cluster, viewer: str
) -> None:
    site = cluster.site
    status, _, body = call(site, "GET", "/api/search?q=dp", bearer(viewer))
    doc = json.loads(body)
    assert status == 200 and doc["servers"] == ["dp1", "dp9"]
    status, _, body = call(site, "GET", "/api/search?q=app", bearer(viewer))
    assert json.loads(body)["packages"] == ["app@1.0"]
    status, headers, _ = call(site, "GET", "/search?q=dp9", bearer(viewer))
    assert (status, headers["Location"]) == (303, "/servers/dp9")
    job = site.distribute("app@1.0", ["dp9"])
    site.cli("job", "cancel", job)
    status, headers, _ = call(site, "GET", f"/search?q={job}", bearer(viewer))
    assert (status, headers["Location"]) == (303, f"/jobs/{job}")
    status, _, body = call(site, "GET", "/search?q=%25_nothing", bearer(viewer))
    assert status == 200 and "none" in body.decode()  # wildcards taken literally


def test_a_packages_page_counts_its_servers_by_state_and_drills_down_to_them(
    cluster: h.Cluster, viewer: str
) -> None:
    site = cluster.site
    job = site.distribute("app@1.0", ["dp1", "dp9"])
    h.wait_until(
        lambda: h.instruction(site.job(job), "dp9")["state"] == "retrying", 60, message="retry"
    )
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


def test_an_operator_distributes_and_removes_from_the_package_page_and_a_viewer_cannot(
    cluster: h.Cluster, viewer: str, ops: str, tmp_path: Path
) -> None:
    site = cluster.site
    site.create_package(h.make_tree(tmp_path / "tool", {"t.bin": 9_000}, seed=7), "tool", "1")
    _, _, page = call(site, "GET", "/packages/tool@1", bearer(viewer))
    assert "Distribute</button>" not in page.decode()
    _, _, page = call(site, "GET", "/packages/tool@1", bearer(ops))
    assert "Distribute</button>" in page.decode() and "group edge" in page.decode()

    def post(who: str, action: str, body: object) -> tuple[int, dict[str, object]]:
        headers = {**bearer(who), "Content-Type": "application/json"}
        status, _, answer = call(
            site, "POST", f"/api/packages/tool@1/{action}", headers, json.dumps(body).encode()
        )
        return status, json.loads(answer)

    before = len(site.jobs())
    assert post(viewer, "distribute", {"to": ["dp1"]})[0] == 403
    status, doc = post(ops, "distribute", {"to": ["dp1"], "all": True})
    assert status == 400 and "exactly one of to, group or all" in str(doc["error"])
    assert len(site.jobs()) == before  # neither made a job
    status, doc = post(ops, "distribute", {"to": ["dp1"]})
    assert status == 200 and doc["by"] == "oda", doc
    assert site.wait_job(str(doc["job"]), 60) == 0
    assert cluster.agents["dp1"].has_package("tool", "1")
    status, doc = post(ops, "remove", {"to": ["dp1"]})
    assert site.wait_job(str(doc["job"]), 60) == 0
    assert not cluster.agents["dp1"].has_package("tool", "1")
    words = [e["message"] for e in site.json("events", "--job", str(doc["job"]))]
    assert any(w.endswith("by oda") for w in words), words


def test_the_servers_list_filters_by_state_group_and_name(cluster: h.Cluster, viewer: str) -> None:
    site = cluster.site

    def names(query: str) -> list[str]:
        status, _, body = call(site, "GET", f"/api/servers?{query}", bearer(viewer))
        assert status == 200, body
        return [s["name"] for s in json.loads(body)["servers"]]

    assert names("") == ["dp1", "dp9"]
    assert names("state=offline") == ["dp9"]
    assert names("state=online") == ["dp1"]
    assert names("group=edge") == ["dp9"]
    assert names("q=DP1") == ["dp1"]
    assert names("state=online&group=edge") == []
    status, _, body = call(site, "GET", "/servers?state=offline", bearer(viewer))
    assert status == 200 and "1 of 2 servers match" in body.decode()
    status, _, _ = call(site, "GET", "/api/servers?state=sideways", bearer(viewer))
    assert status == 400


def _events(site: h.Site, path: str, headers: dict[str, str]) -> Iterator[str]:
    """The data of each server-sent event of ``path``, as they come."""
    parts = urlsplit(site.url)
    assert parts.hostname is not None and parts.port is not None
    context = ssl.create_default_context(cafile=str(site.ca))
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=20, context=context)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:300]
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        data: list[str] = []
        while line := resp.fp.readline().decode():
            if line.startswith("data: "):
                data.append(line[6:].rstrip("\n"))
            elif line == "\n" and data:
                yield json.loads("\n".join(data))
                data = []
    finally:
        conn.close()


def test_a_live_page_is_pushed_when_it_changes(cluster: h.Cluster, viewer: str) -> None:
    site = cluster.site
    job = site.distribute("app@1.0", ["dp9"])  # never answers: it stays retrying
    stream = _events(site, f"/api/live?src=/api/jobs/{job}", bearer(viewer))
    first = next(stream)
    assert f"job-{job}" in first and "cancelled" not in first
    started = time.monotonic()
    site.cli("job", "cancel", job)
    for html in stream:  # pushed, not asked for: the first page that differs
        if 'data-state="cancelled"' in html:
            break
    assert time.monotonic() - started < 10
    status, _, body = call(site, "GET", "/api/live?src=https://elsewhere/api/x", bearer(viewer))
    assert status == 400 and b"one of this site's /api/ pages" in body
    status, _, _ = call(site, "GET", f"/api/live?src=/api/jobs/{job}")
    assert status == 401  # the stream needs a credential, as the page does


def test_the_new_writes_with_a_session_cookie_need_the_sites_own_marks(
    cluster: h.Cluster, ops: str
) -> None:
    from tests.integration.test_operators import session_of

    site = cluster.site
    cookie = session_of(site, ops)
    body = json.dumps({"to": ["dp1"]}).encode()
    before = len(site.jobs())
    for path in ("/api/packages/app@1.0/distribute", "/api/rollouts/r0/pause"):
        status, _, answer = call(
            site, "POST", path, {**cookie, "Content-Type": "application/json"}, body
        )
        assert status == 403 and b"X-Packdist-Action" in answer, answer  # a forged form
        marked = {**cookie, "X-Packdist-Action": "1", "Origin": "https://evil.example"}
        status, _, answer = call(site, "POST", path, marked, body)
        assert status == 403 and b"another site" in answer, answer
    assert len(site.jobs()) == before
