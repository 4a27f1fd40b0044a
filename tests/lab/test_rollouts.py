"""Rollouts in waves on real cables: a first wave whose server is unplugged pauses the
rollout and its later waves receive nothing; the server that comes back still installs; a
resume finishes the rollout. A health check that fails on one server leaves that server's
old version active while the others of its wave switch.

The site and three distribution servers each sit in their own network namespace; the cable
is pulled with ``ip link set DEV down``. The package carries its own health check
(``bin/check``): it fails on a server whose agent home holds a file named ``unhealthy``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h
from tests.conftest import require
from tests.lab.conftest import _lab_unavailable
from tests.lab.netns import Lab

SERVERS = ["dp1", "dp2", "dp3"]
HOSTS = {"site": "10.77.0.1", "dp1": "10.77.0.11", "dp2": "10.77.0.12", "dp3": "10.77.0.13"}
WAVE_TIMEOUT = 4.0  # seconds: the unplugged server of wave 1 counts as failed after this
CHECK = """#!/bin/sh
# the package's own health check: fails where the agent's home says "unhealthy"
if [ -e "$PACKDIST_TREE/../../../unhealthy" ]; then echo "self-test failed: unhealthy"; exit 1; fi
exit 0
"""


@pytest.fixture(scope="module")
def lab4() -> Iterator[Lab]:
    require("lab", _lab_unavailable())  # module fixtures come before the per-test check
    with Lab(HOSTS) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def cluster(lab4: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Cluster]:
    root = tmp_path_factory.mktemp("rollouts")
    c = h.start_lab_cluster(lab4, root, SERVERS)
    try:
        for version in ("1.0", "2.0", "3.0"):
            c.site.create_package(_tree(root / f"src-{version}", version), "app", version)
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def _tree(folder: Path, version: str) -> Path:
    tree = h.make_tree(folder, {"data/blob.bin": 2 * 1024 * 1024}, seed=int(version[0]))
    check = tree / "bin" / "check"
    check.parent.mkdir(exist_ok=True)
    check.write_text(CHECK)
    check.chmod(0o755)
    return tree


def _rollout(c: h.Cluster, rollout_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = c.site.json("rollout", "show", rollout_id)
    return doc


def _wait_state(c: h.Cluster, rollout_id: str, state: str, timeout: float) -> dict[str, Any]:
    return h.wait_until(
        lambda: (d := _rollout(c, rollout_id))["state"] == state and d,
        timeout,
        interval=0.5,
        message=lambda: f"rollout {state}: {_rollout(c, rollout_id)}",
    )


def _current(c: h.Cluster, server: str) -> str | None:
    link = c.agents[server].home / "packages" / "app" / "current"
    return os.readlink(link) if os.path.lexists(link) else None


def test_a_rollout_whose_first_wave_fails_pauses_and_later_waves_receive_nothing(
    lab4: Lab, cluster: h.Cluster
) -> None:
    lab = lab4
    site = cluster.site
    lab.unplug("dp1")
    created = site.json(
        "rollout", "create", "app@1.0", "--to", "dp1,dp2,dp3", "--waves", "1,100%",
        "--wave-timeout", str(WAVE_TIMEOUT),
    )  # fmt: skip
    rid = created["rollout"]
    assert [w["servers"] for w in created["waves"]] == [["dp1"], ["dp2", "dp3"]]
    doc = _wait_state(cluster, rid, "paused", 30)
    assert [w["state"] for w in doc["waves"]] == ["failed", "waiting"]
    assert f"1 not installed after {WAVE_TIMEOUT:g}s" in doc["why"], doc
    # paused: for a while, nothing reaches the later wave's servers, and no job names them
    until = time.monotonic() + 5
    while time.monotonic() < until:
        for server in ("dp2", "dp3"):
            assert not cluster.agents[server].package_dir("app", "1.0").exists()
        time.sleep(0.5)
    wave1 = site.job(doc["waves"][0]["job"])
    assert [i["server"] for i in wave1["instructions"]] == ["dp1"]
    assert doc["waves"][1]["job"] is None
    # the cable is back: dp1's instruction was never lost, and it installs
    lab.replug("dp1")
    assert site.wait_job(wave1["id"], timeout=60) == 0, h.describe_job(site.job(wave1["id"]))
    assert _rollout(cluster, rid)["state"] == "paused"  # a person decides to go on
    site.cli("rollout", "resume", rid)
    doc = _wait_state(cluster, rid, "succeeded", 60)
    assert [w["state"] for w in doc["waves"]] == ["failed", "succeeded"]
    for server in SERVERS:
        assert cluster.agents[server].has_package("app", "1.0")
    words = [e["message"] for e in site.json("events")]
    assert any(w.startswith(f"rollout {rid} resumed") for w in words), words


def test_a_failing_health_check_leaves_the_old_version_active(cluster: h.Cluster) -> None:
    site = cluster.site
    first = site.json(
        "rollout", "create", "app@2.0", "--to", ",".join(SERVERS), "--waves", "1,100%",
        "--activate", "--health-check", "bin/check",
    )  # fmt: skip
    _wait_state(cluster, first["rollout"], "succeeded", 60)
    assert {s: _current(cluster, s) for s in SERVERS} == dict.fromkeys(SERVERS, "2.0")

    (cluster.agents["dp2"].home / "unhealthy").write_text("")
    doc = site.json(
        "rollout", "create", "app@3.0", "--to", "dp1,dp2,dp3", "--waves", "2,100%",
        "--activate", "--health-check", "bin/check",
    )  # fmt: skip
    rid = doc["rollout"]
    doc = _wait_state(cluster, rid, "paused", 60)
    wave1 = site.job(doc["waves"][0]["job"])
    dp2 = h.instruction(wave1, "dp2")
    assert dp2["state"] == "failed", h.describe_job(wave1)
    assert "health check bin/check exited 1: self-test failed: unhealthy" in dp2["last_error"]
    assert h.instruction(wave1, "dp1")["state"] == "installed"
    # dp1 passed and switched; dp2 holds 3.0 but kept 2.0 active; dp3 (wave 2) got nothing
    assert {s: _current(cluster, s) for s in SERVERS} == {"dp1": "3.0", "dp2": "2.0", "dp3": "2.0"}
    assert cluster.agents["dp2"].has_package("app", "3.0")
    assert not cluster.agents["dp3"].package_dir("app", "3.0").exists()
    site.cli("rollout", "cancel", rid)
    assert _rollout(cluster, rid)["state"] == "cancelled"
