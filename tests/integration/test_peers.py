"""Peers: agents fetch chunks from each other, with the site's credential, and never trust
what they get.

Real site, real agents, real HTTP on 127.0.0.1. The fan-out under bandwidth limits (twelve
servers, 100 Mbit/s cables) is in tests/lab/test_fanout.py.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from packdist.auth import ANY_PEER, PEER_CHUNKS_PATH, peer_assertion, site_assertion
from packdist.core.signing import SigningKey
from tests import harness as h

MB = 1024 * 1024


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("peers") / "src"
    return h.make_tree(root, {"data/a.bin": 6 * MB + 5, "data/b.bin": 2 * MB + 1}, seed=21)


def _installed(site: h.Site, job_id: str) -> dict[str, Any]:
    code = site.wait_job(job_id, 60)
    doc = site.job(job_id)
    assert code == 0, h.describe_job(doc)
    return doc


def test_a_server_fetches_from_a_peer_that_holds_the_package(tmp_path: Path, tree: Path) -> None:
    c = h.start_cluster(tmp_path, ["dp1", "dp2"], throttle={"dp2": 50 * MB})
    try:
        c.site.create_package(tree, "app", "1.0")
        _installed(c.site, c.site.distribute("app@1.0", ["dp1"]))
        doc = _installed(c.site, c.site.distribute("app@1.0", ["dp2"]))
        dp2 = h.instruction(doc, "dp2")
        h.assert_same_tree(tree, c.agents["dp2"].package_dir("app", "1.0"))
        size = dp2["bytes_total"]
        assert dp2["bytes_from_peers"] > 0.9 * size, h.describe_job(doc)
        assert dp2["bytes_from_site"] < 0.1 * size, h.describe_job(doc)
        # The proxy between dp2 and the site saw next to none of the chunks.
        assert c.proxies["dp2"].down_bytes < 0.1 * size
        shown = c.site.cli("job", "show", doc["id"]).stdout
        assert "from site / peers" in shown, shown
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def test_servers_receiving_together_share_the_work(tmp_path: Path, tree: Path) -> None:
    c = h.start_cluster(tmp_path, ["dp1", "dp2", "dp3"])
    try:
        c.site.create_package(tree, "app", "1.0")
        doc = _installed(c.site, c.site.distribute("app@1.0", ["dp1", "dp2", "dp3"]))
        for agent in c.agents.values():
            h.assert_same_tree(tree, agent.package_dir("app", "1.0"))
        size = sum(i["bytes_total"] for i in doc["instructions"])
        from_peers = sum(i["bytes_from_peers"] for i in doc["instructions"])
        # Each server owns about a third of the chunks and fetches the rest from the other
        # two: about 2/3 of what they receive comes from peers.
        assert from_peers > 0.3 * size, h.describe_job(doc)
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def test_no_peers_keeps_a_job_on_the_site(tmp_path: Path, tree: Path) -> None:
    c = h.start_cluster(tmp_path, ["dp1", "dp2"])
    try:
        c.site.create_package(tree, "app", "1.0")
        _installed(c.site, c.site.distribute("app@1.0", ["dp1"]))
        job_id = c.site.json("distribute", "app@1.0", "--to", "dp2", "--no-peers")["job"]
        doc = _installed(c.site, job_id)
        assert h.instruction(doc, "dp2")["bytes_from_peers"] == 0, h.describe_job(doc)
        h.assert_same_tree(tree, c.agents["dp2"].package_dir("app", "1.0"))
    finally:
        c.close()


def test_a_peer_passes_on_no_rot(tmp_path: Path, tree: Path) -> None:
    """dp1's copy rots after it installed; dp2 still gets the exact tree (the damaged chunk
    from the site), and dp1 never serves the rotten bytes."""
    c = h.start_cluster(tmp_path, ["dp1", "dp2"])
    try:
        c.site.create_package(tree, "app", "1.0")
        _installed(c.site, c.site.distribute("app@1.0", ["dp1"]))
        victim = c.agents["dp1"].package_dir("app", "1.0") / "data" / "a.bin"
        with open(victim, "r+b") as f:
            f.seek(3 * MB)
            byte = f.read(1)
            f.seek(3 * MB)
            f.write(bytes([byte[0] ^ 0xFF]))
        doc = _installed(c.site, c.site.distribute("app@1.0", ["dp2"]))
        h.assert_same_tree(tree, c.agents["dp2"].package_dir("app", "1.0"))
        dp2 = h.instruction(doc, "dp2")
        assert dp2["bytes_from_site"] > 0, h.describe_job(doc)  # the damaged chunk
        assert dp2["bytes_from_peers"] > 0.5 * dp2["bytes_total"], h.describe_job(doc)
    finally:
        c.close()


def _peer_request(
    url: str, token: str | None, package: str, context: ssl.SSLContext | None = None
) -> tuple[int, bytes]:
    body = {"package": package, "digests": [], "wait": 0}
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return h.http_request("POST", url + PEER_CHUNKS_PATH, body, headers=headers, context=context)


def test_peers_are_served_only_with_the_sites_credential_for_that_package(
    tmp_path: Path, tree: Path
) -> None:
    c = h.start_cluster(tmp_path, ["dp1"])
    try:
        c.site.create_package(tree, "app", "1.0")
        doc = _installed(c.site, c.site.distribute("app@1.0", ["dp1"]))
        pkg = doc["package_id"]
        url = c.agents["dp1"].url
        site_key = SigningKey.load(c.site.home / "site.key")
        stranger = SigningKey.generate()

        assert _peer_request(url, None, pkg)[0] == 401
        assert _peer_request(url, peer_assertion(stranger, "dp9", pkg), pkg)[0] == 401
        other = peer_assertion(site_key, "dp9", "cd" * 32)
        status, body = _peer_request(url, other, pkg)
        assert status == 401 and b"another package" in body, body
        as_dp9 = h.as_server(c.site.home, "dp9", tmp_path / "certs")
        status, _ = _peer_request(url, peer_assertion(site_key, "dp9", pkg), pkg, as_dp9)
        assert status == 200
        if url.startswith("https://"):  # dp9's credential, lifted: no good without its cert
            as_dp8 = h.as_server(c.site.home, "dp8", tmp_path / "certs")
            status, body = _peer_request(url, peer_assertion(site_key, "dp9", pkg), pkg, as_dp8)
            assert status == 401 and b"without that server's certificate" in body, body
            status, body = _peer_request(url, peer_assertion(site_key, "dp9", pkg), pkg)
            assert status == 401 and b"without that server's certificate" in body, body
        # a credential good at any peer is good on the peer route only: not for an install
        anyone = site_assertion(site_key, ANY_PEER, "POST", "/v1/validate")
        req = urllib.request.Request(url + "/v1/validate", data=b"{}", method="POST")
        req.add_header("Authorization", f"Bearer {anyone}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 401 and b"another server" in refused.value.read()
    finally:
        c.close()


def _rate_over(counter: Any, seconds: float) -> float:
    """Bytes per second ``counter()`` grew by over ``seconds``."""
    b0, t0 = counter(), time.monotonic()
    time.sleep(seconds)
    return (counter() - b0) / (time.monotonic() - t0)


LIMIT = 2_000_000  # bytes/s
SLACK = 1.3  # token-bucket burst and TCP buffers


@pytest.mark.parametrize("where", ["agent download", "site upload"])
def test_bandwidth_limits_hold(tmp_path: Path, tree: Path, where: str) -> None:
    """With a 2 MB/s limit (the agent's download, or the site's upload), no 2-second window
    of the transfer moves more than the limit allows, and the package still arrives whole."""
    site = h.make_site(tmp_path)
    # counts what the site sends
    proxy = h.ThrottledProxy(site.host, site.port, tls=site.tls).start()
    agents = h.add_agents(site, tmp_path, ["dp1"], site_urls={"dp1": proxy.url})
    if where == "agent download":
        agents["dp1"].env = {"PACKDIST_AGENT_DOWNLOAD_LIMIT": str(LIMIT)}
    else:
        site.env = {"PACKDIST_TRANSFER_UPLOAD_LIMIT": "16mbit"}  # = 2 MB/s
    c = h.Cluster(site, agents, {"dp1": proxy})
    try:
        h.start_all([site, agents["dp1"]])
        c.site.create_package(tree, "app", "1.0")
        job_id = c.site.distribute("app@1.0", ["dp1"])
        h.wait_until(lambda: proxy.down_bytes > 1_000_000, 30, message="the transfer to start")
        rate = _rate_over(lambda: proxy.down_bytes, 2.0)
        assert rate <= LIMIT * SLACK, f"{rate / 1e6:.2f} MB/s through a {LIMIT / 1e6:g} MB/s limit"
        _installed(c.site, job_id)
        h.assert_same_tree(tree, agents["dp1"].package_dir("app", "1.0"))
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()
