"""Child sites report to their parent: real ``site serve`` processes over HTTPS on
127.0.0.1, a central site (hq), a branch (br) that joined it with ``--parent`` and the token
``site add-child`` printed, and a branch of the branch (gc). Each serves its own servers;
the parent sees them, named under the child, within seconds, and a parent that goes away
stops nothing at the child."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from packdist.auth import new_token
from packdist.core import tls
from tests import harness as h
from tests.conftest import run_packdist

SEEN_WITHIN = 20.0  # seconds: a report every 3 s, an agent's first heartbeat, a slow CI


def _one_line_refusal(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


class Hierarchy:
    def __init__(self, root: Path) -> None:
        self.hq = h.make_site(root, "hq", home="hq")
        self.br = h.make_site(root, "br", home="br")
        self.gc = h.make_site(root, "gc", home="gc")
        self.hq.add_child(self.br)
        self.br.add_child(self.gc)
        self.agents = {
            **h.add_agents(self.br, root / "br-servers", ["dp1"]),
            **h.add_agents(self.gc, root / "gc-servers", ["dp9"]),
        }
        self.all = [self.hq, self.br, self.gc, *self.agents.values()]

    def server(self, site: h.Site, child: str, name: str) -> dict[str, Any] | None:
        doc = site.children().get(child)
        if doc is None:
            return None
        return next((s for s in doc["servers"] if s["name"] == name), None)

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}:\n{c.log_tail(15)}" for c in self.all)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hierarchy]:
    sites = Hierarchy(tmp_path_factory.mktemp("hierarchy"))
    try:
        h.start_all(sites.all)
        yield sites
    finally:
        for c in sites.all:
            c.close()


def test_a_child_and_its_servers_show_at_the_parent_within_seconds(tree: Hierarchy) -> None:
    dp1 = h.wait_until(
        lambda: (s := tree.server(tree.hq, "br", "br/dp1")) and s["online"] and s,
        SEEN_WITHIN,
        message=lambda: f"br/dp1 online at hq: {tree.hq.children()}\n{tree.logs()}",
    )
    assert dp1["disk_free"] > 0
    br = tree.hq.children()["br"]
    assert (br["state"], br["site"], br["url"]) == ("online", "br", tree.br.url)
    status = tree.hq.json("status")
    assert [c["name"] for c in status["child_sites"]] == ["br"]
    assert "br/dp1" in [s["name"] for s in status["child_sites"][0]["servers"]]
    words = [e["message"] for e in tree.hq.json("events")]
    assert any("child site br (br) reported for the first time" in w for w in words), words


def test_a_grandchilds_servers_reach_the_top_named_under_both(tree: Hierarchy) -> None:
    h.wait_until(
        lambda: (s := tree.server(tree.hq, "br", "br/gc/dp9")) and s["online"],
        SEEN_WITHIN,
        message=lambda: f"br/gc/dp9 online at hq: {tree.hq.children()}\n{tree.logs()}",
    )
    assert tree.server(tree.br, "gc", "gc/dp9") is not None  # and br names it under gc


def test_the_child_serves_on_while_its_parent_is_down_and_reports_when_it_returns(
    tree: Hierarchy,
) -> None:
    h.wait_until(lambda: tree.hq.children()["br"]["online"], SEEN_WITHIN, message="br online")
    tree.hq.stop()
    try:
        # the branch and its server go on as before: the link to the parent is not in the way
        h.wait_until(
            lambda: "unreachable" in tree.br.log_tail(30), SEEN_WITHIN, message="br noticed"
        )
        assert tree.br.healthy()
        servers = {s["name"]: s for s in tree.br.json("server", "list")["servers"]}
        assert servers["dp1"]["online"]
        line = next(x for x in tree.br.log_tail(30).splitlines() if "unreachable" in x)
        assert "this site goes on serving its own servers" in line
    finally:
        tree.hq.start()
    h.wait_until(
        lambda: (s := tree.server(tree.hq, "br", "br/dp1")) and s["online"],
        SEEN_WITHIN,
        message=lambda: f"br/dp1 back at hq: {tree.hq.children()}\n{tree.logs()}",
    )


def test_a_site_with_a_wrong_token_is_refused_and_the_parent_shows_nothing_of_it(
    tree: Hierarchy, tmp_path: Path
) -> None:
    rogue = h.make_site(tmp_path, "rogue", home="rogue")
    rogue.parent_url = tree.hq.url
    # well formed, naming hq's authority: only the secret is wrong
    rogue.env["PACKDIST_PARENT_TOKEN"] = new_token(_fingerprint(tree.hq))
    try:
        rogue.start()
        h.wait_until(
            lambda: "the parent refused this site" in rogue.log_tail(20),
            SEEN_WITHIN,
            message=lambda: f"rogue refused: {rogue.log_tail(20)}",
        )
        assert rogue.healthy()  # refused by the parent, serving its own all the same
        assert "rogue" not in tree.hq.children()
    finally:
        rogue.close()


def _fingerprint(site: h.Site) -> str:
    return tls.fingerprint(tls.load_certificate(site.ca.read_bytes()))


def test_distributing_to_a_child_sites_servers_says_it_is_not_built_yet(
    tree: Hierarchy, tmp_path: Path
) -> None:
    src = h.make_tree(tmp_path / "src", {"a.txt": 100}, seed=1)
    tree.hq.create_package(src, "app", "1.0")
    for targets in (["--site", "br"], ["--to", "br/dp1"]):
        proc = tree.hq.cli("distribute", "app@1.0", *targets, check=False)
        _one_line_refusal(proc, "packages do not cross to child sites yet")
    assert tree.hq.jobs() == []


# --- the command line, no process running ---------------------------------------------------


@pytest.fixture
def hq(tmp_path: Path) -> Path:
    home = tmp_path / "hq"
    run_packdist(home, "site", "init", "--name", "hq")
    return home


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["add-child", "b r", "--url", "https://br.test:8700"], "name"),
        (["add-child", "br", "--url", "br.test:8700"], "must start with http:// or https://"),
    ],
)
def test_a_bad_child_is_refused_in_one_line_and_nothing_is_added(
    hq: Path, args: list[str], words: str
) -> None:
    _one_line_refusal(run_packdist(hq, "site", *args, check=False), words)
    out = run_packdist(hq, "site", "children").stdout
    assert "no child sites yet" in out


def test_a_child_site_is_added_once(hq: Path) -> None:
    run_packdist(hq, "site", "add-child", "br", "--url", "https://br.test:8700")
    proc = run_packdist(hq, "site", "add-child", "br", "--url", "https://other:8700", check=False)
    _one_line_refusal(proc, "child site br already exists")


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--parent", "https://hq.test:8700"], {}, "--parent and --token go together"),
        (["--parent", "hq.test:8700", "--token", new_token("sha256:" + "A" * 43)], {}, "URL"),
        (["--parent", "https://hq.test:8700", "--token", "secret"], {}, "not a child site token"),
        (
            ["--parent", "https://hq.test:8700"],
            {"PACKDIST_PARENT_TOKEN": new_token()},
            "fingerprint",
        ),
    ],
)
def test_site_serve_refuses_a_parent_it_cannot_join_before_it_listens(
    hq: Path, args: list[str], env: dict[str, str], words: str
) -> None:
    proc = run_packdist(
        hq, "site", "serve", "--listen", f"127.0.0.1:{h.free_port()}", *args, check=False, env=env
    )
    line = _one_line_refusal(proc, words)
    assert "listening" not in proc.stdout + line
