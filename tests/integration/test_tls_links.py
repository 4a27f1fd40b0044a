"""The links speak TLS with the site's own authority: real ``site serve`` and ``agent
serve`` processes over HTTPS on 127.0.0.1, the agents given only ``--site`` and the token
(its fingerprint is how they know the site before they send it anything)."""

from __future__ import annotations

import socket
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from packdist.core import tls
from packdist.site.authority import SiteAuthority
from tests import harness as h


def _get(port: int, ctx: ssl.SSLContext | None, host: str = "127.0.0.1") -> bytes:
    """The raw answer to ``GET /healthz`` on ``port`` (``ctx`` None: plain HTTP), or an
    OSError (ssl.SSLError included) when the server will not talk."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        conn = raw if ctx is None else ctx.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise
    with conn:
        request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        conn.sendall(request.encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def _unverifying(cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client that checks nothing of the server, presenting ``cert`` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Cluster]:
    root = tmp_path_factory.mktemp("tls")
    site = h.make_site(root, tls=True)
    agents = h.add_agents(site, root, ["dp1", "dp2"])
    c = h.Cluster(site, agents)
    try:
        h.start_all([site, *agents.values()])
        tree = h.make_tree(root / "src", {"data/blob.bin": 2 * 1024 * 1024 + 5}, seed=3)
        site.create_package(tree, "app", "1.0")
        job = site.distribute("app@1.0", ["dp1", "dp2"])
        assert site.wait_job(job, 60) == 0, h.describe_job(site.job(job)) + c.dump_logs()
        for agent in agents.values():
            h.assert_same_tree(tree, agent.package_dir("app", "1.0"))
        yield c
    finally:
        c.close()


def test_a_package_is_installed_over_https_by_agents_given_only_the_site_url_and_token(
    cluster: h.Cluster,
) -> None:
    site = cluster.site
    assert site.url.startswith("https://")
    for agent in cluster.agents.values():
        assert agent.site_url.startswith("https://") and agent.url.startswith("https://")
        pinned = (agent.home / "tls" / "ca.pem").read_bytes()
        assert pinned == site.ca.read_bytes(), "the agent pinned another authority"
        assert "pinned the site's certificate authority" in agent.log_tail(400)
    key = site.home / "tls" / "site.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # the site's certificate is its authority's and names the loopback names it is reached at
    verified = ssl.create_default_context(cafile=str(site.ca))
    for host in ("127.0.0.1", "localhost"):
        assert b" 200 " in _get(site.port, verified, host)


def test_an_agent_or_a_site_serving_https_refuses_plain_http(cluster: h.Cluster) -> None:
    for port in (cluster.agents["dp1"].port, cluster.site.port):
        assert b" 200 " in _get(port, _unverifying())
        try:
            answer = _get(port, None)
        except OSError:
            answer = b""
        # no HTTP answer at all (not even a 400 saying why): the TLS layer hangs up
        assert b"HTTP/" not in answer, answer
        assert b'"ok"' not in answer, answer


def test_an_agent_serves_the_certificate_the_site_signed_for_its_url(cluster: h.Cluster) -> None:
    agent = cluster.agents["dp1"]
    verified = ssl.create_default_context(cafile=str(cluster.site.ca))
    assert b" 200 " in _get(agent.port, verified)
    assert b'"enrolled": true' in _get(agent.port, verified)


def test_a_client_presenting_a_certificate_of_another_authority_is_refused(
    cluster: h.Cluster, tmp_path: Path
) -> None:
    stranger = SiteAuthority.create(tmp_path / "stranger", "stranger", time.time())
    key = tls.new_private_key()
    tls.save_key(key, tmp_path / "client.key")
    issued = stranger.issue_for_key(key, "intruder", ["127.0.0.1"], time.time())
    (tmp_path / "client.pem").write_bytes(issued.pem)
    foreign = _unverifying(tmp_path / "client.pem", tmp_path / "client.key")
    for port in (cluster.agents["dp1"].port, cluster.site.port):
        assert b" 200 " in _get(port, _unverifying()), "refused even without a certificate"
        try:
            answer = _get(port, foreign)
        except OSError:  # TLS 1.3: the refusal arrives as an alert at the first read
            answer = b""
        assert b" 200 " not in answer, answer


def test_an_agent_that_starts_before_its_site_serves_its_real_certificate_once_enrolled(
    tmp_path: Path,
) -> None:
    site = h.make_site(tmp_path, tls=True)
    agent = h.add_agents(site, tmp_path, ["dp1"])["dp1"]
    with h.Cluster(site, {"dp1": agent}):
        agent.start()  # the site is down: a temporary self-signed certificate
        verified = ssl.create_default_context(cafile=str(site.ca))
        assert b" 200 " in _get(agent.port, _unverifying())
        with pytest.raises(ssl.SSLError):
            _get(agent.port, verified)
        site.start()
        h.wait_until(lambda: site.server_seen("dp1"), 30, message="the agent to enroll")

        def real() -> bool:
            try:
                return b" 200 " in _get(agent.port, verified)
            except ssl.SSLError:
                return False

        h.wait_until(real, 20, message="the agent to serve the certificate the site signed")
        assert agent.starts == 1, "the agent was restarted"


def test_plain_http_is_served_only_when_asked_for_and_with_a_warning(tmp_path: Path) -> None:
    site = h.make_site(tmp_path, tls=False)
    agents = h.add_agents(site, tmp_path, ["dp1"])
    with h.Cluster(site, agents):
        h.start_all([site, *agents.values()])
        assert site.url.startswith("http://")
        assert b" 200 " in _get(site.port, None)
        assert b" 200 " in _get(agents["dp1"].port, None)
        for component in (site, agents["dp1"]):
            assert "WARNING: --plain-http" in component.log_tail(100), component.log_tail(100)
