"""Cables pulled: a distribution server loses its network during a job and gets it back."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests import harness as h
from tests.lab.netns import Lab

AGENT_PORT = 8701
SITE_PORT = 8700
UNPLUGGED_FOR = 15.0  # seconds dp2 stays unplugged while the job runs
BACK_WITHIN = 10.0  # dp2 must hold the package this soon after its cable is back
NOT_TERMINAL = {"pending", "sending", "retrying"}


class StaticWeb(h.Component):
    """``python -m http.server`` in a directory: something that answers ``GET /healthz``."""

    kind = "web"

    def __init__(self, name: str, directory: Path, log_dir: Path, **kwargs: Any) -> None:
        super().__init__(name, directory, log_dir, tls=False, **kwargs)  # it speaks clear text
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "healthz").write_text("ok\n")

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            self.host,
            "--directory",
            str(self.directory),
            str(self.port),
        ]


def test_lab_hosts_reach_each_other_only_through_their_cables(lab: Lab, tmp_path: Path) -> None:
    """Sanity of the lab itself: namespaces talk over the bridge; unplug cuts one host off."""
    web = StaticWeb(
        "site",
        tmp_path / "web",
        tmp_path / "logs",
        host=lab.addr("site"),
        port=8000,
        netns=lab.ns("site"),
    )
    try:
        web.start(timeout=15)
        url = f"{web.url}/healthz"
        assert h.healthy(url, lab.ns("dp1")) and h.healthy(url, lab.ns("dp2"))
        # The root namespace is not part of the lab: no lab address, link or route there.
        root_view = subprocess.run(
            ["sh", "-c", "ip -4 -o addr; ip -4 route; ip -o link"], capture_output=True, text=True
        ).stdout
        assert "10.77.0." not in root_view and "pdbr0" not in root_view, root_view

        lab.unplug("dp2")
        assert not lab.link_is_up("dp2")
        assert not h.healthy(url, lab.ns("dp2"), timeout=1), "dp2 still reaches the site"
        assert h.healthy(url, lab.ns("dp1")), "unplugging dp2 cut dp1 off too"

        lab.replug("dp2")
        h.wait_until(lambda: h.healthy(url, lab.ns("dp2"), timeout=1), 10, message="dp2 back")
    finally:
        web.close()


def test_server_unplugged_during_job_gets_package_after_replug(lab: Lab, tmp_path: Path) -> None:
    """The SMS case: a server unplugged before a distribution gets it soon after the replug.

    While the cable is out, the job stays active and keeps dp2's instruction (never lost,
    never terminal) and dp1 is installed regardless; once the cable is back, dp2 holds the
    exact tree within ``BACK_WITHIN`` seconds, and the job succeeds.
    """
    site = h.make_site(tmp_path, host=lab.addr("site"), port=SITE_PORT, netns=lab.ns("site"))
    agents = h.add_agents(
        site,
        tmp_path,
        ["dp1", "dp2"],
        hosts={n: lab.addr(n) for n in ("dp1", "dp2")},
        netns={n: lab.ns(n) for n in ("dp1", "dp2")},
        port=AGENT_PORT,
    )
    cluster = h.Cluster(site, agents)
    dp1, dp2 = agents["dp1"], agents["dp2"]
    tree = h.make_tree(tmp_path / "src", {"data/blob.bin": 6 * 1024 * 1024, "lib/a.bin": 70_001})
    site.create_package(tree, "app", "1.0")
    try:
        h.start_all([site, dp1, dp2])
        lab.unplug("dp2")
        job_id = site.distribute("app@1.0", ["dp1", "dp2"])

        # ~15 s without a cable: dp1 is installed, dp2's instruction waits, nothing is lost.
        unplugged_at = time.monotonic()
        seen_states: set[str] = set()
        while time.monotonic() - unplugged_at < UNPLUGGED_FOR:
            doc = h.job(site, job_id)
            assert doc["state"] == "active", h.describe_job(doc)
            assert sorted(i["server"] for i in doc["instructions"]) == ["dp1", "dp2"], doc
            dp2_state = h.instruction(doc, "dp2")["state"]
            assert dp2_state in NOT_TERMINAL, h.describe_job(doc)
            assert not dp2.package_dir("app", "1.0").exists(), "dp2 installed without a cable"
            seen_states.add(dp2_state)
            time.sleep(1.0)
        doc = h.job(site, job_id)
        assert h.instruction(doc, "dp1")["state"] == "installed", h.describe_job(doc)
        h.assert_same_tree(tree, dp1.package_dir("app", "1.0"))
        dp2_before = h.instruction(doc, "dp2")
        assert dp2_before["attempts"] >= 1, h.describe_job(doc)
        assert dp2_before["last_error"], f"no error recorded while unplugged: {doc}"

        lab.replug("dp2")
        replugged_at = time.monotonic()
        h.wait_until(
            lambda: dp2.has_package("app", "1.0"),
            BACK_WITHIN + 5,
            interval=0.1,
            message=lambda: f"dp2 to install after replug; {h.describe_job(h.job(site, job_id))}",
        )
        took = time.monotonic() - replugged_at
        print(f"dp2 installed {took:.1f}s after the replug; dp2 states while out: {seen_states}")
        assert took <= BACK_WITHIN, (
            f"dp2 got the package {took:.1f}s after its cable came back (bound {BACK_WITHIN}s)"
        )
        h.assert_same_tree(tree, dp2.package_dir("app", "1.0"))

        assert site.wait_job(job_id, timeout=10) == 0, h.describe_job(h.job(site, job_id))
        doc = h.job(site, job_id)
        assert doc["state"] == "succeeded", h.describe_job(doc)
        assert all(i["state"] == "installed" for i in doc["instructions"]), doc
    except BaseException:
        print(cluster.dump_logs())
        raise
    finally:
        cluster.close()
