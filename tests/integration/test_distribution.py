"""Distribution end to end: a real site, real agents, real HTTP on 127.0.0.1, real faults.

Each test is named for the fault it survives. Everything goes through the ``packdist`` CLI
(``--json``) and HTTP, as an operator would see it (tests/harness.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import harness as h
from tests.conftest import run_packdist

MB = 1024 * 1024
NOT_TERMINAL = {"pending", "sending", "retrying"}
BIG_FILES = {f"data/part{i}.bin": 40 * MB + i for i in range(4)}  # ~160 MB of random bytes
BIG_BYTES = sum(BIG_FILES.values())
RATE = 30 * MB  # bytes/s through the agents' proxy: the big package travels for ~5 s
IN_FLIGHT = 48 * MB  # forwarded by the proxy but possibly not yet kept by a killed agent

Make = Callable[..., h.Cluster]


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "src"
    return h.make_tree(root, {"data/blob.bin": 3 * MB + 17, "lib/x/y.bin": 100_003}, seed=7)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough that a transfer takes a moment: faults can land in the middle of it."""
    return h.make_tree(tmp_path_factory.mktemp("big") / "src", BIG_FILES, seed=11)


def _wait_installed(site: h.Site, job_id: str, timeout: float) -> dict[str, object]:
    code = site.wait_job(job_id, timeout)
    doc = site.job(job_id)
    assert code == 0, f"job wait exited {code}: {h.describe_job(doc)}"
    assert doc["state"] == "succeeded", h.describe_job(doc)
    assert all(i["state"] == "installed" for i in doc["instructions"]), h.describe_job(doc)
    return doc


def test_distribute_to_three_agents_installs_exact_tree(cluster: Make, small_tree: Path) -> None:
    c = cluster("dp1", "dp2", "dp3")
    c.site.create_package(small_tree, "app", "1.0")
    job_id = c.site.distribute("app@1.0", ["dp1", "dp2", "dp3"])

    doc = _wait_installed(c.site, job_id, timeout=60)
    assert doc["package"] == "app@1.0"
    assert sorted(i["server"] for i in doc["instructions"]) == ["dp1", "dp2", "dp3"]
    for i in doc["instructions"]:
        assert i["bytes_sent"] > 0, h.describe_job(doc)
    for agent in c.agents.values():
        h.assert_same_tree(small_tree, agent.package_dir("app", "1.0"))


def _mid_transfer(
    doc: dict[str, Any] | None, c: h.Cluster, server: str, low: float = 0.45, high: float = 0.9
) -> bool:
    """``server``'s instruction is sending and its proxy has carried part of the package.

    ``job show`` reports progress every few seconds, too coarse to land a fault inside a
    transfer; the proxy's count is immediate.
    """
    if doc is None or h.instruction(doc, server)["state"] != "sending":
        return False
    carried = c.proxies[server].down_bytes
    return BIG_BYTES * low <= carried <= BIG_BYTES * high and not c.agents[server].has_package(
        "big", "1.0"
    )


def _assert_attempts_never_decrease(watch: h.JobWatcher, servers: list[str]) -> None:
    """Across every snapshot (a restart included): no instruction lost, attempts kept."""
    last = dict.fromkeys(servers, 0)
    for doc in watch.snapshots():
        assert sorted(i["server"] for i in doc["instructions"]) == servers, doc
        for i in doc["instructions"]:
            assert i["attempts"] >= last[i["server"]], f"attempts went down: {watch.history}"
            last[i["server"]] = i["attempts"]


def test_agent_killed_mid_transfer_resumes_and_installs(cluster: Make, big_tree: Path) -> None:
    c = cluster("dp1", throttle={"dp1": RATE})
    site, dp1, proxy = c.site, c.agents["dp1"], c.proxies["dp1"]
    site.create_package(big_tree, "big", "1.0")
    job_id = site.distribute("big@1.0", ["dp1"])

    with h.JobWatcher(site, job_id) as watch:
        h.wait_until(
            lambda: _mid_transfer(watch.latest, c, "dp1"),
            30,
            interval=0.02,
            message=lambda: f"dp1 mid-transfer ({proxy.down_bytes} bytes carried)",
        )
        dp1.kill()
        before = proxy.down_bytes
        assert not dp1.has_package("big", "1.0"), "installed before the kill landed"
        doc = site.job(job_id)
        assert doc["state"] == "active", h.describe_job(doc)
        assert h.instruction(doc, "dp1")["state"] in NOT_TERMINAL, h.describe_job(doc)

        dp1.start()
        _wait_installed(site, job_id, timeout=90)
    _assert_attempts_never_decrease(watch, ["dp1"])
    h.assert_same_tree(big_tree, dp1.package_dir("big", "1.0"))
    # Resumed: what arrived before the kill was kept, not fetched again.
    again = proxy.down_bytes - before
    assert again <= BIG_BYTES - before + IN_FLIGHT, (
        f"after the restart the site sent {again} bytes; {before} of {BIG_BYTES} had"
        " arrived before the kill: the agent fetched the package again instead of resuming"
    )


def test_site_killed_mid_job_restarts_and_completes_job(cluster: Make, big_tree: Path) -> None:
    c = cluster("dp1", "dp2", "dp3", throttle={"dp1": RATE, "dp2": RATE})
    site, dp3 = c.site, c.agents["dp3"]
    dp3.stop()  # dp3 is down: its instruction is retrying when the site dies
    site.create_package(big_tree, "big", "1.0")
    servers = ["dp1", "dp2", "dp3"]
    job_id = site.distribute("big@1.0", servers)

    with h.JobWatcher(site, job_id) as watch:

        def mid_job() -> bool:
            doc = watch.latest
            return (
                doc is not None
                and h.instruction(doc, "dp3")["attempts"] >= 1
                and any(_mid_transfer(doc, c, s, low=0.2) for s in ("dp1", "dp2"))
            )

        h.wait_until(mid_job, 40, interval=0.02, message="a transfer under way, dp3 tried")
        site.kill()
        before = site.job(job_id)  # the site's commands read its home; no server needed
        assert before["state"] == "active", h.describe_job(before)
        assert sorted(i["server"] for i in before["instructions"]) == servers

        site.start()
        dp3.start()
        after = _wait_installed(site, job_id, timeout=90)
    for server in servers:
        was, now = h.instruction(before, server), h.instruction(after, server)
        assert now["attempts"] >= was["attempts"], (server, was, now)
    assert h.instruction(after, "dp3")["attempts"] >= 2, h.describe_job(after)
    _assert_attempts_never_decrease(watch, servers)
    for agent in c.agents.values():
        h.assert_same_tree(big_tree, agent.package_dir("big", "1.0"))


def test_hung_agent_does_not_delay_other_servers(cluster: Make, small_tree: Path) -> None:
    """A server that accepts connections and never answers must not hold the others up."""
    c = cluster("dp1", "dp2")
    site = c.site
    with h.HungServer() as hung:
        site.add_server("hung", hung.url)
        site.create_package(small_tree, "app", "1.0")
        started = time.monotonic()
        job_id = site.distribute("app@1.0", ["hung", "dp1", "dp2"])

        h.wait_until(
            lambda: all(a.has_package("app", "1.0") for a in c.agents.values()),
            20,
            message=lambda: f"dp1 and dp2 installed: {h.describe_job(site.job(job_id))}",
        )
        both_installed_after = time.monotonic() - started
        doc = site.job(job_id)
        assert doc["state"] == "active", h.describe_job(doc)
        assert h.instruction(doc, "hung")["state"] in NOT_TERMINAL, h.describe_job(doc)
        assert hung.accepted >= 1, "the site never even connected to the hung server"
        for agent in c.agents.values():
            h.assert_same_tree(small_tree, agent.package_dir("app", "1.0"))
        h.wait_until(
            lambda: all(
                h.instruction(site.job(job_id), s)["state"] == "installed" for s in ("dp1", "dp2")
            ),
            10,
            message="dp1 and dp2 marked installed",
        )

        # The hung server's request times out, is recorded as such, and is retried for ever.
        def timed_out() -> dict[str, object] | None:
            doc = site.job(job_id)
            assert doc["state"] == "active", h.describe_job(doc)
            i = h.instruction(doc, "hung")
            assert i["state"] in NOT_TERMINAL, h.describe_job(doc)
            err = (i["last_error"] or "").lower()
            return doc if "timeout" in err or "timed out" in err else None

        doc = h.wait_until(timed_out, 75, interval=0.5, message="a timeout recorded for hung")
        hang = time.monotonic() - started
        assert both_installed_after < hang / 2, (
            f"dp1/dp2 took {both_installed_after:.1f}s, the hang {hang:.1f}s"
        )
        assert h.instruction(doc, "hung")["attempts"] >= 1, h.describe_job(doc)


def test_corrupted_chunk_in_library_stops_the_job_with_the_cause_until_repaired(
    cluster: Make, small_tree: Path
) -> None:
    c = cluster("dp1")
    site, dp1 = c.site, c.agents["dp1"]
    site.create_package(small_tree, "app", "1.0")
    chunks = site.library_chunks()
    assert chunks, "the library holds no chunk files"
    victim = max(chunks, key=lambda p: p.stat().st_size)
    victim.chmod(0o644)
    original = victim.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    job_id = site.distribute("app@1.0", ["dp1"])
    package_dir = dp1.package_dir("app", "1.0")

    def stopped() -> dict[str, object] | None:
        assert not package_dir.exists(), "the agent installed a package with a corrupt chunk"
        doc = site.job(job_id)
        return doc if h.instruction(doc, "dp1")["state"] == "failed" else None

    # Retrying cannot mend the site's own library: the instruction stops at once, saying
    # which chunk is damaged and what to do, with the failure's kind as data.
    doc = h.wait_until(stopped, 30, message=lambda: h.describe_job(site.job(job_id)))
    i = h.instruction(doc, "dp1")
    assert doc["state"] == "failed", h.describe_job(doc)
    assert i["error_kind"] == "integrity", i
    assert "is corrupt in the library" in i["last_error"], i
    assert "packdist package verify app@1.0" in i["last_error"], i
    time.sleep(3)  # and it stays stopped: no attempt behind the operator's back
    assert h.instruction(site.job(job_id), "dp1")["attempts"] == i["attempts"]
    assert not package_dir.exists()

    # Repaired, the next attempt installs the exact tree: nothing bad was kept on the agent.
    victim.write_bytes(original)
    site.cli("job", "retry", job_id)
    _wait_installed(site, job_id, timeout=30)
    h.assert_same_tree(small_tree, package_dir)


def test_agent_without_credential_is_refused(cluster: Make) -> None:
    c = cluster("dp1")
    dp1 = c.agents["dp1"]
    # Once enrolled, the agent can check credentials (before, it may answer 503).
    h.wait_until(lambda: c.site.server_seen("dp1"), 15, message="dp1 to report to its site")
    assert h.http_get(f"{dp1.url}/healthz")[0] == 200
    paths = ["/", "/install", "/packages", "/v1/install", "/api/packages", "/status"]
    bogus = {"Authorization": "Bearer not-a-real-token"}
    for method, path in [*(("GET", p) for p in paths), *(("POST", p) for p in paths)]:
        body = {"manifest": "", "signature": ""} if method == "POST" else None
        for headers, what in (({}, "without a credential"), (bogus, "with a bogus credential")):
            status, _ = h.http_request(method, f"{dp1.url}{path}", body, headers)
            assert status in (401, 403), f"{method} {path} {what} answered {status}"
    assert not (dp1.home / "packages").exists() or not any((dp1.home / "packages").iterdir())


def test_distribute_unknown_server_or_package_creates_no_job(
    site_home: Path, small_tree: Path
) -> None:
    run_packdist(site_home, "server", "add", "dp1", "--url", "http://127.0.0.1:9")
    run_packdist(site_home, "package", "create", str(small_tree), "--name", "app", "--version", "1")
    for args in (
        ["nosuch@1", "--to", "dp1"],
        ["app@2", "--to", "dp1"],
        ["app@1", "--to", "ghost"],
        ["app@1", "--to", "dp1,ghost"],
    ):
        proc = run_packdist(site_home, "distribute", *args, "--json", check=False)
        assert proc.returncode != 0, f"distribute {args} exited 0: {proc.stdout}"
        assert proc.stdout.strip() == "", f"distribute {args} printed {proc.stdout!r}"
        message = proc.stderr.strip()
        assert message and "Traceback" not in message and len(message.splitlines()) == 1, message
    jobs = h.run_json(site_home, "job", "list")["jobs"]
    assert jobs == [], jobs
