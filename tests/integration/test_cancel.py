"""A cancel reaches the agent: the install under way stops there, instead of finishing
behind an instruction that already reads ``cancelled``."""

from __future__ import annotations

import time
from pathlib import Path

from tests import harness as h

MB = 1024 * 1024


def test_cancelling_a_job_stops_the_install_under_way_on_the_agent(tmp_path: Path) -> None:
    tree = h.make_tree(tmp_path / "src", {"data/blob.bin": 8 * MB + 3}, seed=5)
    site = h.make_site(tmp_path)
    agents = h.add_agents(site, tmp_path, ["dp1"])
    agent = agents["dp1"]
    agent.env["PACKDIST_AGENT_DOWNLOAD_LIMIT"] = "1MB"  # about 8 s for the whole package
    cluster = h.Cluster(site, agents)
    try:
        h.start_all([site, agent])
        site.create_package(tree, "app", "1.0")
        job_id = site.distribute("app@1.0", ["dp1"])

        def under_way() -> bool:
            i = h.instruction(site.job(job_id), "dp1")
            return i["state"] == "sending" and int(i["bytes_done"]) > 0

        h.wait_until(under_way, 30, message=lambda: h.describe_job(site.job(job_id)))
        started = time.monotonic()
        site.cli("job", "cancel", job_id)
        h.wait_until(
            lambda: "cancelled by the site" in agent.log_tail(200),
            10,
            message=lambda: f"the agent told to stop; its log:\n{agent.log_tail(40)}",
        )
        stopped_after = time.monotonic() - started
        # Longer than the whole transfer would have taken: it never completes.
        time.sleep(10)
        assert not agent.has_package("app", "1.0"), "the cancelled install finished anyway"
        assert h.instruction(site.job(job_id), "dp1")["state"] == "cancelled"
        assert stopped_after < 8, f"the agent stopped {stopped_after:.1f}s after the cancel"

        # What it fetched stays in staging: a new job resumes and installs the exact tree.
        again = site.distribute("app@1.0", ["dp1"])
        assert site.wait_job(again, 60) == 0, h.describe_job(site.job(again))
        h.assert_same_tree(tree, agent.package_dir("app", "1.0"))
    finally:
        cluster.close()
