"""Child sites: real ``site serve`` processes over HTTPS on 127.0.0.1, a central site (hq),
a branch (br) that joined it with ``--parent`` and the token ``site add-child`` printed, and
a branch of the branch (gc). Each serves its own servers; the parent sees them, named
under the child, within seconds; a parent that goes away stops nothing at the child; a
package sent from the top reaches the servers behind both, crossing each link once."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
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
        self.hq.env["PACKDIST_RETRY_CAP"] = "3"  # a window that opens is taken within seconds
        self.agents = {
            **h.add_agents(self.br, root / "br-servers", ["dp1", "dp2"]),
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
    code, page = tree.hq.operator_get("/")  # the dashboard: the child, and its servers
    assert code == 200
    html = page.decode()
    assert "Child sites" in html and 'data-child="br"' in html
    assert 'data-server="br/dp1"' in html


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


PACKAGE_BYTES = 3 * 1024 * 1024 + 17  # random: it crosses each link at its size


def _package(tree: Hierarchy, root: Path, version: str) -> None:
    src = h.make_tree(root / f"src-{version}", {"data/blob.bin": PACKAGE_BYTES}, seed=int(version))
    tree.hq.create_package(src, "app", f"{version}.0")


def _distribute(tree: Hierarchy, version: str, *targets: str) -> str:
    doc = tree.hq.json("distribute", f"app@{version}.0", *targets)
    return str(doc["job"])


def test_a_package_reaches_every_server_behind_a_child_crossing_its_link_once(
    tree: Hierarchy, tmp_path: Path
) -> None:
    _wait_online(tree, "br/dp1", "br/dp2", "br/gc/dp9")
    _package(tree, tmp_path, "1")
    job = _distribute(tree, "1", "--site", "br")
    assert tree.hq.wait_job(job, 120) == 0, h.describe_job(tree.hq.job(job)) + tree.logs()
    doc = tree.hq.job(job)
    assert sorted(i["server"] for i in doc["instructions"]) == ["br/dp1", "br/dp2", "br/gc/dp9"]
    for name in ("dp1", "dp2", "dp9"):
        assert tree.agents[name].has_package("app", "1.0"), name
    # the package crossed hq's link to br once, though three servers behind it needed it
    crossed = sum(i["bytes_sent"] for i in doc["instructions"])
    assert PACKAGE_BYTES * 0.9 < crossed < PACKAGE_BYTES * 1.1, h.describe_job(doc)
    # and the child did the work with a job of its own, saying who sent it
    words = [e["message"] for e in tree.br.json("events")]
    assert any("sent by parent site hq" in w for w in words), words


def test_a_new_version_crosses_to_the_child_as_a_delta_of_the_one_it_holds(
    tree: Hierarchy, tmp_path: Path
) -> None:
    _wait_online(tree, "br/dp1")  # run alone, this test may come first: br reports dp1
    old = h.make_tree(tmp_path / "src-5", {"data/blob.bin": PACKAGE_BYTES}, seed=5)
    tree.hq.create_package(old, "app", "5.0")
    job = _distribute(tree, "5", "--to", "br/dp1")
    assert tree.hq.wait_job(job, 120) == 0, h.describe_job(tree.hq.job(job))
    new = tmp_path / "src-6"
    shutil.copytree(old, new, symlinks=True)
    blob = new / "data" / "blob.bin"
    data = bytearray(blob.read_bytes())
    data[1_000_000:1_000_100] = bytes(100)  # one small edit: one chunk or two change
    blob.write_bytes(bytes(data))
    tree.hq.create_package(new, "app", "6.0")
    job = _distribute(tree, "6", "--to", "br/dp1")
    assert tree.hq.wait_job(job, 120) == 0, h.describe_job(tree.hq.job(job)) + tree.logs()
    (sent,) = [i["bytes_sent"] for i in tree.hq.job(job)["instructions"]]
    # without a base the changed chunks cross whole (128 KiB or more); as a delta, a few KiB
    assert 0 < sent < 32 * 1024, h.describe_job(tree.hq.job(job))
    assert tree.agents["dp1"].has_package("app", "6.0")


def test_a_package_removed_at_the_parent_goes_from_the_server_behind_the_child(
    tree: Hierarchy, tmp_path: Path
) -> None:
    if not tree.agents["dp2"].has_package("app", "1.0"):
        _package(tree, tmp_path, "1")
        job = _distribute(tree, "1", "--to", "br/dp2")
        assert tree.hq.wait_job(job, 120) == 0, h.describe_job(tree.hq.job(job))
    job = str(tree.hq.json("package", "remove", "app@1.0", "--from", "br/dp2")["job"])
    assert tree.hq.wait_job(job, 120) == 0, h.describe_job(tree.hq.job(job)) + tree.logs()
    assert not tree.agents["dp2"].has_package("app", "1.0")
    # and sent again, it is installed again (the child's earlier install does not count)
    job = _distribute(tree, "1", "--to", "br/dp2")
    assert tree.hq.wait_job(job, 120) == 0, h.describe_job(tree.hq.job(job)) + tree.logs()
    assert tree.agents["dp2"].has_package("app", "1.0")


def test_a_job_cancelled_at_the_parent_stops_the_childs_work_for_it(
    tree: Hierarchy, tmp_path: Path
) -> None:
    agent = tree.agents["dp2"]
    agent.stop()  # the child cannot finish: its job for dp2 waits
    try:
        _package(tree, tmp_path, "4")
        job = _distribute(tree, "4", "--to", "br/dp2")
        h.wait_until(
            lambda: any(j["package"] == "app@4.0" for j in tree.br.jobs()),
            SEEN_WITHIN,
            message=lambda: f"br's job for app@4.0: {tree.br.jobs()}\n{tree.logs()}",
        )
        tree.hq.cli("job", "cancel", job)
        h.wait_until(
            lambda: all(
                j["state"] == "cancelled" for j in tree.br.jobs() if j["package"] == "app@4.0"
            ),
            SEEN_WITHIN,
            message=lambda: f"br's job cancelled: {tree.br.jobs()}\n{tree.logs()}",
        )
    finally:
        agent.start()
    time.sleep(3)  # the agent is back: nothing is installed behind the parent's back
    assert not agent.has_package("app", "4.0")


def test_a_closed_window_holds_the_package_at_the_parent_until_it_opens(
    tree: Hierarchy, tmp_path: Path
) -> None:
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%a")
    tree.hq.cli("site", "set-child", "br", "--window", f"{tomorrow} 00:00-01:00")
    try:
        _package(tree, tmp_path, "2")
        job = _distribute(tree, "2", "--to", "br/dp1")
        cell = h.wait_until(
            lambda: (i := h.instruction(tree.hq.job(job), "br/dp1"))["last_error"] and i,
            SEEN_WITHIN,
            message="a cause for br/dp1",
        )
        assert f"at br: waiting for window, opens {tomorrow} 00:00 (UTC)" in cell["last_error"]
        assert cell["bytes_sent"] == 0
        assert not tree.agents["dp1"].has_package("app", "2.0")
    finally:
        tree.hq.cli("site", "set-child", "br", "--always")
    assert tree.hq.wait_job(job, 120) == 0, h.describe_job(tree.hq.job(job)) + tree.logs()
    assert tree.agents["dp1"].has_package("app", "2.0")


def _online(site: h.Site) -> set[str]:
    return {s["name"] for s in site.json("server", "list")["servers"] if s["online"]}


def _wait_online(tree: Hierarchy, *names: str) -> None:
    """Until the top site lists every one of ``names`` online (reported by a child)."""
    h.wait_until(
        lambda: set(names) <= _online(tree.hq),
        SEEN_WITHIN,
        message=lambda: f"{', '.join(names)} online at hq: {_online(tree.hq)}\n{tree.logs()}",
    )


# --- the command line, no process running ---------------------------------------------------


@pytest.fixture
def hq(tmp_path: Path) -> Path:
    home = tmp_path / "hq"
    run_packdist(home, "site", "init", "--name", "hq")
    return home


@pytest.fixture(scope="module")
def shared_hq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One parent home for the refusals (each must leave it as it was): child br added."""
    home = tmp_path_factory.mktemp("refusals") / "hq"
    run_packdist(home, "site", "init", "--name", "hq")
    run_packdist(
        home, "site", "add-child", "br", "--url", "https://br.test:8700", "--bandwidth", "2MB"
    )
    return home


def _children(home: Path) -> str:
    return run_packdist(home, "site", "children", "--json").stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["add-child", "b r", "--url", "https://br.test:8700"], "name"),
        (["add-child", "br", "--url", "br.test:8700"], "must start with http:// or https://"),
    ],
)
def test_a_bad_child_is_refused_in_one_line_and_nothing_is_added(
    shared_hq: Path, args: list[str], words: str
) -> None:
    before = _children(shared_hq)
    _one_line_refusal(run_packdist(shared_hq, "site", *args, check=False), words)
    assert _children(shared_hq) == before


def test_a_child_site_is_added_once(shared_hq: Path) -> None:
    before = _children(shared_hq)
    proc = run_packdist(
        shared_hq, "site", "add-child", "br", "--url", "https://other:8700", check=False
    )
    _one_line_refusal(proc, "child site br already exists")
    assert _children(shared_hq) == before


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
    shared_hq: Path, args: list[str], env: dict[str, str], words: str
) -> None:
    proc = run_packdist(
        shared_hq,
        "site",
        "serve",
        "--listen",
        f"127.0.0.1:{h.free_port()}",
        *args,
        check=False,
        env=env,
    )
    line = _one_line_refusal(proc, words)
    assert "listening" not in proc.stdout + line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["set-child", "nobody", "--bandwidth", "1mbit"], "no child site named nobody"),
        (["set-child", "br", "--always", "--window", "Mon 10:00-11:00"], "contradict"),
        (["set-child", "br", "--window", "Mon-Fri"], "write it as DAYS HH:MM-HH:MM"),
        (
            ["set-child", "br", "--window", "Mon 10:00-11:00", "--timezone", "Mars/Olympus"],
            "time zone",
        ),
        (["set-child", "br", "--bandwidth", "fast"], "rate"),
    ],
)
def test_a_link_change_that_cannot_work_is_refused_in_one_line_and_changes_nothing(
    shared_hq: Path, args: list[str], words: str
) -> None:
    before = _children(shared_hq)
    _one_line_refusal(run_packdist(shared_hq, "site", *args, check=False), words)
    assert _children(shared_hq) == before


def test_a_link_change_is_shown_with_the_child(hq: Path) -> None:
    run_packdist(hq, "site", "add-child", "br", "--url", "https://br.test:8700")
    out = run_packdist(
        hq,
        "site",
        "set-child",
        "br",
        "--bandwidth",
        "8mbit",
        "--window",
        "Mon-Fri 18:00-07:00",
        "--timezone",
        "Europe/Berlin",
    ).stdout
    assert "link to child site br: 976.6 KiB/s" in out, out
    (child,) = json.loads(run_packdist(hq, "site", "children", "--json").stdout)["children"]
    assert child["bandwidth"] == 1_000_000
    assert child["windows"] == "Mon,Tue,Wed,Thu,Fri 18:00-07:00 (Europe/Berlin)"


def test_a_slow_child_with_many_servers_waiting_never_delays_another_child(
    tmp_path: Path,
) -> None:
    """hq has two despooler slots. Behind slow, a thin link and two servers wanting the
    package; behind fast, one. Each child has its share of the slots, so fast's server is
    installed while slow's are still receiving: without the share, slow's two attempts
    held both slots until its link carried the whole package."""
    hq = h.make_site(tmp_path, "hq", home="hq")
    hq.serve_args = ["--workers", "2"]
    slow = h.make_site(tmp_path, "slow", home="slow")
    fast = h.make_site(tmp_path, "fast", home="fast")
    hq.add_child(slow)
    hq.add_child(fast)
    hq.cli("site", "set-child", "slow", "--bandwidth", "200kbit")  # 3 MiB: two minutes
    agents = {
        **h.add_agents(slow, tmp_path / "slow-servers", ["dp1", "dp2"]),
        **h.add_agents(fast, tmp_path / "fast-servers", ["dp3"]),
    }
    everything = [hq, slow, fast, *agents.values()]
    try:
        h.start_all(everything)
        wanted = {"slow/dp1", "slow/dp2", "fast/dp3"}
        h.wait_until(
            lambda: wanted <= _online(hq),
            SEEN_WITHIN,
            message=lambda: f"every server online at hq: {_online(hq)}",
        )
        src = h.make_tree(tmp_path / "src", {"data/blob.bin": PACKAGE_BYTES}, seed=11)
        hq.create_package(src, "app", "1.0")
        # slow's job first: its two servers are due before fast's and would take both slots
        behind = str(hq.json("distribute", "app@1.0", "--site", "slow")["job"])
        job = str(hq.json("distribute", "app@1.0", "--site", "fast")["job"])
        assert hq.wait_job(job, 60) == 0, h.describe_job(hq.job(job))
        assert agents["dp3"].has_package("app", "1.0")
        waiting = hq.job(behind)
        assert waiting["state"] != "complete", h.describe_job(waiting)
        assert not agents["dp1"].has_package("app", "1.0")
        hq.cli("job", "cancel", behind)
    finally:
        for c in everything:
            c.close()
