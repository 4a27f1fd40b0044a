"""Clients in the lab: a client takes its bytes from the server at its location, and falls
back at once to the next source when that server's cable is pulled, before the fetch or
in the middle of it, or when it is slow (Configuration Manager's boundary groups wait 120
minutes by default).

Hosts: the site, dp1 (location a), dp2 (location b) and the client ``cl`` (location a),
each in its network namespace on one bridge. The bytes per source are the fetch's own
report; dp1's cable counters say the same from the kernel's side.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h
from tests.conftest import PACKDIST, require
from tests.lab.conftest import _lab_unavailable
from tests.lab.netns import DEFAULT_HOSTS, Lab

MB = 1024 * 1024
SIZE = 24 * MB
DONE_WITHIN = 30.0  # seconds a fetch may take once its nearest source is gone (loose)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require("lab", _lab_unavailable())  # module fixtures come before the per-test check
    with Lab({**DEFAULT_HOSTS, "cl": "10.77.0.21"}) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def cluster(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Cluster]:
    """The site and two servers holding the package, started once for the module (each
    test puts dp1's cable back as it found it)."""
    root = tmp_path_factory.mktemp("clients")
    c = h.start_lab_cluster(
        lab, root, ["dp1", "dp2"], labels={"dp1": {"site": "a"}, "dp2": {"site": "b"}}
    )
    try:
        tree = h.make_tree(root / "src", {"data/big.bin": SIZE}, seed=41)
        c.site.create_package(tree, "app", "1")
        job = c.site.distribute("app@1", ["dp1", "dp2"])
        assert c.site.wait_job(job, 120) == 0, h.describe_job(c.site.job(job))
        c.source_tree = tree  # type: ignore[attr-defined]
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


@pytest.fixture
def src(lab: Lab, cluster: h.Cluster) -> Iterator[Path]:
    """The package's source tree; afterwards dp1's cable is plugged in and fast again, and
    the site has heard from dp1 since (so it is a source for the next test)."""
    yield cluster.source_tree  # type: ignore[attr-defined]
    lab.replug("dp1")
    lab.shape("dp1", rate="10gbit")
    back = time.time()

    def heard() -> bool:
        for s in cluster.site.json("server", "list")["servers"]:
            if s["name"] == "dp1" and s.get("last_seen"):
                return (
                    dt.datetime.fromisoformat(s["last_seen"].replace("Z", "+00:00")).timestamp()
                    > back
                )
        return False

    h.wait_until(heard, 30, message="dp1 heard from again")


def _token(site: h.Site, name: str) -> str:
    return str(site.json("client", "add", name, "--label", "site=a")["token"])


def _fetch(lab: Lab, site: h.Site, token: str, into: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PACKDIST_CLIENT_TOKEN": token}
    env.pop("PACKDIST_HOME", None)
    cmd = [*PACKDIST, "fetch", "app@1", "--into", str(into), "--site", site.url, "--json"]
    return subprocess.Popen(
        [*h.netns_prefix(lab.ns("cl")), *cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _done(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_a_client_takes_its_bytes_from_the_server_at_its_location(
    lab: Lab, cluster: h.Cluster, src: Path, tmp_path: Path
) -> None:
    sent_before = lab.link_bytes("dp1")[1]
    doc = _done(_fetch(lab, cluster.site, _token(cluster.site, "c1"), tmp_path / "app"))
    h.assert_same_tree(src, tmp_path / "app")
    assert set(doc["bytes"]) == {"dp1"}, doc
    assert lab.link_bytes("dp1")[1] - sent_before >= SIZE  # dp1's cable carried them


def test_a_client_whose_server_is_unplugged_before_the_fetch_falls_back_at_once(
    lab: Lab, cluster: h.Cluster, src: Path, tmp_path: Path
) -> None:
    token = _token(cluster.site, "c2")
    lab.unplug("dp1")
    started = time.monotonic()
    doc = _done(_fetch(lab, cluster.site, token, tmp_path / "app"))
    took = time.monotonic() - started
    h.assert_same_tree(src, tmp_path / "app")
    assert doc["bytes"].get("dp1", 0) == 0 and doc["bytes"].get("dp2", 0) >= SIZE, doc
    assert [d["source"] for d in doc["dropped"]] == ["dp1"], doc
    assert took < DONE_WITHIN, doc


def test_a_client_whose_server_is_unplugged_mid_fetch_finishes_from_the_next(
    lab: Lab, cluster: h.Cluster, src: Path, tmp_path: Path
) -> None:
    token = _token(cluster.site, "c3")
    lab.shape("dp1", rate="40mbit")  # about 5 s for the package: time to pull the cable
    sent_before = lab.link_bytes("dp1")[1]
    fetch = _fetch(lab, cluster.site, token, tmp_path / "app")
    h.wait_until(lambda: lab.link_bytes("dp1")[1] - sent_before > 4 * MB, 60, message="dp1 sending")
    lab.unplug("dp1")
    unplugged = time.monotonic()
    doc = _done(fetch)
    took = time.monotonic() - unplugged
    h.assert_same_tree(src, tmp_path / "app")
    assert doc["bytes"].get("dp1", 0) > 0 and doc["bytes"].get("dp2", 0) > 0, doc
    assert doc["bytes"]["dp1"] + doc["bytes"]["dp2"] >= SIZE, doc
    assert [d["source"] for d in doc["dropped"]] == ["dp1"], doc
    assert took < DONE_WITHIN, doc


def test_a_client_whose_nearest_server_is_slow_takes_the_rest_from_the_next(
    lab: Lab, cluster: h.Cluster, src: Path, tmp_path: Path
) -> None:
    """dp1's cable at 2 Mbit/s: a batch of chunks (about 8 MiB) takes it over half a minute,
    longer than a batch may (10 s plus its bytes at 1 MB/s): dropped as slow, not waited on."""
    token = _token(cluster.site, "c4")
    lab.shape("dp1", rate="2mbit")
    started = time.monotonic()
    doc = _done(_fetch(lab, cluster.site, token, tmp_path / "app"))
    took = time.monotonic() - started
    h.assert_same_tree(src, tmp_path / "app")
    assert doc["bytes"].get("dp2", 0) > SIZE / 2, doc
    (dropped,) = doc["dropped"]
    assert dropped["source"] == "dp1" and "too slow" in dropped["error"], doc
    assert took < 2 * DONE_WITHIN, doc
