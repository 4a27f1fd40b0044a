"""A distribution server whose disk is too small: a real tmpfs, a real package.

The agent must say so before it transfers anything ("disk full: need N, have M"), leave
nothing half-written, keep the instruction retrying with that reason, and install the
version once the disk has room.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness as h

MB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/agent-dp1`` as a 24 MiB tmpfs: the home of dp1's agent."""
    mount = tmp_path / "agent-dp1"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_reported_before_transfer_then_installed_when_space_freed(
    tmp_path: Path, small_disk: Path
) -> None:
    tree = h.make_tree(tmp_path / "src", {"data/a.bin": 20 * MB, "data/b.bin": 20 * MB})
    site = h.make_site(tmp_path)
    agents = h.add_agents(site, tmp_path, ["dp1"])
    cluster = h.Cluster(site, agents)
    with cluster:
        h.start_all([site, *agents.values()])
        site.create_package(tree, "app", "1.0")
        job_id = site.distribute("app@1.0", ["dp1"])

        def disk_full_reported() -> bool:
            i = h.instruction(site.job(job_id), "dp1")
            return i["state"] == "retrying" and "disk full: need" in (i["last_error"] or "")

        h.wait_until(disk_full_reported, timeout=30, message="disk full never reported")
        doc = site.job(job_id)
        i = h.instruction(doc, "dp1")
        assert doc["state"] == "active", h.describe_job(doc)
        assert "have" in i["last_error"], i
        assert i["bytes_sent"] == 0, "nothing may be transferred for a version that cannot fit"
        agent_home = agents["dp1"].home
        assert not agents["dp1"].has_package("app", "1.0")
        assert list((agent_home / "staging").iterdir()) == [], "nothing half-written is left"

        subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
        assert site.wait_job(job_id, timeout=90) == 0, h.describe_job(site.job(job_id))
        h.assert_same_tree(tree, agents["dp1"].package_dir("app", "1.0"))
