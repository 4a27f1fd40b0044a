"""Clients: ``packdist fetch`` installs a package into a directory of its own from the
nearest servers that hold it, falling back at once, every chunk verified.

Real site, real agents, real HTTP(S) on 127.0.0.1; the fetch is the real command in a
subprocess with no home. The cable pulled under a fetch is in tests/lab/test_clients.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h
from tests.conftest import PACKDIST

MB = 1024 * 1024


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Version 1, and version 2 with one file of three changed."""
    root = tmp_path_factory.mktemp("client-trees")
    sizes = {"data/a.bin": 3 * MB + 5, "data/b.bin": 2 * MB + 1, "data/c.bin": MB + 7}
    v1 = h.make_tree(root / "v1", sizes, seed=31)
    v2 = root / "v2"
    shutil.copytree(v1, v2, symlinks=True)
    (v2 / "data" / "c.bin").write_bytes(os.urandom(MB + 9))
    return v1, v2


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, trees: tuple[Path, Path]
) -> Iterator[h.Cluster]:
    """dp1 at location a, dp2 at location b, both holding app@1."""
    root = tmp_path_factory.mktemp("clients")
    c = h.start_cluster(root, ["dp1", "dp2"], labels={"dp1": {"site": "a"}, "dp2": {"site": "b"}})
    try:
        c.site.create_package(trees[0], "app", "1")
        job = c.site.distribute("app@1", ["dp1", "dp2"])
        assert c.site.wait_job(job, 60) == 0, h.describe_job(c.site.job(job))
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def add_client(site: h.Site, name: str, location: str | None = None) -> str:
    labels = ["--label", f"site={location}"] if location else []
    doc = site.json("client", "add", name, *labels)
    assert doc["name"] == name and doc["token"].startswith("pdt_"), doc
    return str(doc["token"])


def fetch(
    site_url: str, token: str, ref: str, into: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PACKDIST_CLIENT_TOKEN": token}
    env.pop("PACKDIST_HOME", None)
    proc = subprocess.run(
        [*PACKDIST, "fetch", ref, "--into", str(into), "--site", site_url, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_a_client_installs_the_exact_tree_from_the_server_at_its_location(
    cluster: h.Cluster, trees: tuple[Path, Path], tmp_path: Path
) -> None:
    site = cluster.site
    token = add_client(site, "c1", "a")
    into = tmp_path / "app"
    doc = report(fetch(site.url, token, "app@1", into))
    h.assert_same_tree(trees[0], into)
    assert doc["sources"][0] == "dp1" and doc["sources"][-1] == "site", doc
    assert set(doc["bytes"]) == {"dp1"}, doc  # all of it from the server at its location
    assert doc["bytes"]["dp1"] >= 6 * MB, doc
    assert "client c1 fetched app@1" in (doc["reported"] or ""), doc
    words = [e["message"] for e in site.json("events") if e["kind"] == "client"]
    assert any("client c1 fetched app@1" in w and "from dp1" in w for w in words), words
    code, body = site.operator_get("/metrics")
    text = body.decode()
    assert code == 200
    assert 'packdist_client_fetches_total{package="app@1"} 1' in text, text
    assert 'packdist_client_bytes_total{package="app@1",source="dp1"}' in text, text
    listed = site.json("client", "list")["clients"]
    assert [c["name"] for c in listed if c["name"] == "c1"] == ["c1"]
    assert "token" not in json.dumps(listed)
    # a client at location b takes it from dp2
    doc_b = report(fetch(site.url, add_client(site, "c1b", "b"), "app@1", tmp_path / "b"))
    assert set(doc_b["bytes"]) == {"dp2"}, doc_b


def test_a_newer_version_fetches_only_the_changed_chunks(
    cluster: h.Cluster, trees: tuple[Path, Path], tmp_path: Path
) -> None:
    site = cluster.site
    site.create_package(trees[1], "app", "2")
    job = site.distribute("app@2", ["dp1"])
    assert site.wait_job(job, 60) == 0, h.describe_job(site.job(job))
    token = add_client(site, "c2", "a")
    into = tmp_path / "app"
    fetch(site.url, token, "app@1", into)
    inode = into.stat().st_ino
    doc = report(fetch(site.url, token, "app@2", into))
    h.assert_same_tree(trees[1], into)
    assert into.stat().st_ino != inode  # replaced whole, not edited in place
    assert doc["fetched"] < 2 * MB, doc  # the changed file (1 MiB) and little else
    assert doc["local"] >= 5 * MB, doc
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == [".app.packdist-lock", ".app.packdist-manifest", "app"], leftovers


def test_a_bad_token_and_a_removed_client_are_refused_with_nothing_changed(
    cluster: h.Cluster, tmp_path: Path
) -> None:
    site = cluster.site
    into = tmp_path / "app"
    token = add_client(site, "c3")
    fingerprint = token.split(".", 1)[1]
    for wrong in ("pdt_" + "x" * 43 + "." + fingerprint, "pdt_" + "x" * 43, "nonsense"):
        bad = fetch(site.url, wrong, "app@1", into, check=False)
        assert bad.returncode != 0
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    refused = fetch(site.url, "pdt_" + "x" * 43 + "." + fingerprint, "app@1", into, check=False)
    assert "the site refused the token: unknown or removed client token" in refused.stderr
    site.cli("client", "remove", "c3")
    gone = fetch(site.url, token, "app@1", into, check=False)
    assert gone.returncode != 0
    assert "unknown or removed client token" in gone.stderr, gone.stderr
    assert token not in gone.stderr
    assert not os.path.lexists(into)
    events = [e["message"] for e in site.json("events")]
    assert any("client c3 removed" in w for w in events), events


def test_a_corrupted_chunk_at_the_nearest_server_is_fetched_elsewhere(
    cluster: h.Cluster, trees: tuple[Path, Path], tmp_path: Path
) -> None:
    site = cluster.site
    dp1 = cluster.agents["dp1"].package_dir("app", "1") / "data" / "a.bin"
    original = dp1.read_bytes()
    try:
        with dp1.open("r+b") as f:  # rot in the middle of one chunk or two
            f.seek(MB)
            f.write(b"\0" * 4096)
        into = tmp_path / "app"
        doc = report(fetch(site.url, add_client(site, "c4", "a"), "app@1", into))
        h.assert_same_tree(trees[0], into)
        assert doc["bytes"].get("dp1", 0) > 0, doc
        others = sum(n for s, n in doc["bytes"].items() if s != "dp1")
        assert 0 < others < 2 * MB, doc  # only the rotten chunk(s), from dp2 or the site
    finally:
        dp1.write_bytes(original)


def test_an_interrupted_fetch_resumes_with_the_chunks_it_had(
    cluster: h.Cluster, tmp_path: Path
) -> None:
    """On no server: the site is the only source, reached through a slow proxy, and the
    first fetch is killed midway."""
    site = cluster.site
    tree = h.make_tree(tmp_path / "src", {"big.bin": 8 * MB}, seed=33)
    site.create_package(tree, "solo", "1")
    token = add_client(site, "c5", "a")
    into = tmp_path / "solo"
    env = {**os.environ, "PACKDIST_CLIENT_TOKEN": token}
    with h.ThrottledProxy(site.host, site.port, 2 * MB, site.tls) as proxy:
        first = subprocess.Popen(
            [*PACKDIST, "fetch", "solo@1", "--into", str(into), "--site", proxy.url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            h.wait_until(lambda: proxy.down_bytes > 3 * MB, 60, message="half the bytes sent")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    assert not into.exists()
    assert (tmp_path / ".solo.packdist-staging" / "tree").is_dir()
    started = time.monotonic()
    doc = report(fetch(site.url, token, "solo@1", into))
    h.assert_same_tree(tree, into)
    assert doc["local"] >= MB, doc  # what the killed fetch had written and verified
    assert doc["local"] + doc["fetched"] >= 8 * MB, doc
    assert time.monotonic() - started < 60


def test_a_client_credential_reads_one_package_at_the_agents_and_nothing_else(
    cluster: h.Cluster, tmp_path: Path
) -> None:
    """What the site hands a client: good on the peers' chunk route for its package, no
    other package and no other route; the site's own routes want the token."""
    from packdist.client.link import SiteLink
    from packdist.client.transfer import TIMEOUTS, Requester
    from packdist.core.manifest import Manifest
    from packdist.errors import AuthError
    from packdist.protocol.chunk_stream import ChunkStreams, StreamStop

    site = cluster.site
    link = SiteLink(site.url, add_client(site, "c6", "a"))
    answer = link.sources("app@1")
    digest = next(iter(Manifest.parse(answer.manifest).chunk_sizes()))
    dp1 = next(s for s in answer.sources if s.name == "dp1")
    streams = ChunkStreams(link.tls(), TIMEOUTS)
    try:
        own = Requester(streams, answer.package_id, answer.credential, link.token)
        frames = list(own(dp1, [digest], StreamStop()))
        assert [f.digest for f in frames] == [digest]
        other = Requester(streams, "cd" * 32, answer.credential, link.token)
        with pytest.raises(AuthError, match="another package"):
            list(other(dp1, [digest], StreamStop()))
    finally:
        streams.close()
    auth = {"Authorization": f"Bearer {answer.credential}"}
    ca = site.ca if site.tls else None
    code, body = h.http_request("POST", f"{dp1.url}/v1/install", {}, auth, ca=ca)
    assert code == 401, body
    code, body = h.http_request("POST", f"{site.url}/v1/client/sources", {}, auth, ca=ca)
    assert code == 401, body
