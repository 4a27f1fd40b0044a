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


@pytest.mark.parametrize("left", ["lapsed", "damaged", "key damaged"])
def test_an_agent_whose_certificate_lapsed_or_was_damaged_while_off_gets_a_new_one_and_installs(
    tmp_path: Path, left: str
) -> None:
    site = h.make_site(tmp_path, tls=True)
    agent = h.add_agents(site, tmp_path, ["dp1"])["dp1"]
    with h.Cluster(site, {"dp1": agent}) as c:
        h.start_all([site, agent])
        cert = agent.home / "tls" / "agent.pem"
        h.wait_until(cert.exists, 30, message="the agent's first certificate")
        agent.stop()
        # what the site signed 40 days ago, for the agent's own key: expired 10 days since
        authority = SiteAuthority.load(site.home)
        request = tls.certificate_request(tls.load_key(agent.home / "tls" / "agent.key"))
        lapsed = authority.issue(request, "dp1", ["127.0.0.1"], time.time() - 40 * 86400).pem
        if left == "key damaged":  # the certificate good, its key not
            written = cert.read_bytes()
            (agent.home / "tls" / "agent.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nxx")
        else:
            written = lapsed if left == "lapsed" else lapsed[:100] + b"garbage" + lapsed[100:]
            cert.write_bytes(written)
        agent.start()
        renewed = lambda: cert.exists() and cert.read_bytes() != written  # noqa: E731
        h.wait_until(renewed, 30, message=lambda: "a new certificate" + c.dump_logs())
        tree = h.make_tree(tmp_path / "src", {"a.bin": 300_000}, seed=5)
        site.create_package(tree, "app", "1.0")
        job = site.distribute("app@1.0", ["dp1"])
        assert site.wait_job(job, 60) == 0, h.describe_job(site.job(job)) + c.dump_logs()
        h.assert_same_tree(tree, agent.package_dir("app", "1.0"))


def test_an_authority_left_in_an_agents_home_that_its_token_does_not_name_is_not_trusted(
    tmp_path: Path,
) -> None:
    site = h.make_site(tmp_path, tls=True)
    agent = h.add_agents(site, tmp_path, ["dp1"])["dp1"]
    stranger = SiteAuthority.create(tmp_path / "stranger", "stranger", time.time())
    (agent.home / "tls").mkdir(parents=True, exist_ok=True)
    (agent.home / "tls" / "ca.pem").write_bytes(stranger.pem)  # from another site, once
    with h.Cluster(site, {"dp1": agent}) as c:
        h.start_all([site, agent])
        h.wait_until(
            lambda: site.server_seen("dp1"), 30, message=lambda: "enrollment" + c.dump_logs()
        )
        assert (agent.home / "tls" / "ca.pem").read_bytes() == site.ca.read_bytes()
        assert "not the certificate authority this agent's token" in agent.log_tail(200)


def test_the_site_refuses_a_servers_token_that_comes_with_another_servers_certificate(
    cluster: h.Cluster, tmp_path: Path
) -> None:
    site, dp1 = cluster.site, cluster.agents["dp1"]
    auth = {"Authorization": f"Bearer {dp1.token}"}
    url = site.url + "/v1/agent/hello"
    as_dp1 = h.as_server(site.home, "dp1", tmp_path)
    assert h.http_request("POST", url, {}, headers=auth, context=as_dp1)[0] == 200
    as_dp2 = h.as_server(site.home, "dp2", tmp_path)
    status, body = h.http_request("POST", url, {}, headers=auth, context=as_dp2)
    assert status == 401 and b"server/dp2's, not dp1's" in body, body


def test_the_site_sends_nothing_to_another_server_found_at_a_servers_address(
    tmp_path: Path,
) -> None:
    site = h.make_site(tmp_path, tls=True)
    agents = h.add_agents(site, tmp_path, ["dp1"])
    with h.Cluster(site, agents) as c:
        h.start_all([site, *agents.values()])
        # dp2 was added at an address dp1's agent answers at now (a reused address)
        site.add_server("dp2", agents["dp1"].url)
        tree = h.make_tree(tmp_path / "src", {"a.bin": 1000}, seed=7)
        site.create_package(tree, "app", "1.0")
        job = site.distribute("app@1.0", ["dp2"])

        def refused() -> str:
            (i,) = site.job(job)["instructions"]
            return str(i["last_error"] or "")

        h.wait_until(lambda: "server/dp1" in refused(), 30, message=lambda: c.dump_logs())
        assert "not of server/dp2" in refused(), refused()
        assert "refused the credential" not in agents["dp1"].log_tail(200)


def test_a_server_whose_name_needs_quoting_in_its_certificate_installs_over_tls(
    tmp_path: Path,
) -> None:
    site = h.make_site(tmp_path, tls=True)
    agents = h.add_agents(site, tmp_path, ["dp+1", "dp+2"])
    with h.Cluster(site, agents) as c:
        h.start_all([site, *agents.values()])
        tree = h.make_tree(tmp_path / "src", {"a.bin": 3 * 1024 * 1024}, seed=8)
        site.create_package(tree, "app", "1.0")
        job = site.distribute("app@1.0", ["dp+1", "dp+2"])
        assert site.wait_job(job, 60) == 0, h.describe_job(site.job(job)) + c.dump_logs()
        for agent in agents.values():
            h.assert_same_tree(tree, agent.package_dir("app", "1.0"))


def test_an_agent_takes_the_sites_requests_only_with_the_sites_certificate(
    cluster: h.Cluster, tmp_path: Path
) -> None:
    from packdist.auth import site_assertion
    from packdist.core.signing import SigningKey

    site, dp1 = cluster.site, cluster.agents["dp1"]
    key = SigningKey.load(site.home / "site.key")  # the site's credential, stolen say
    url = dp1.url + "/v1/validate"

    def ask(context: ssl.SSLContext | None) -> tuple[int, bytes]:
        auth = {"Authorization": "Bearer " + site_assertion(key, "dp1", "POST", "/v1/validate")}
        return h.http_request("POST", url, {}, headers=auth, context=context)

    status, body = ask(h.as_server(site.home, "dp2", tmp_path))  # a server's certificate
    assert status == 401 and b"site's certificate, not server/dp2" in body, body
    status, body = ask(None)  # none at all
    assert status == 401 and b"not none" in body, body


def test_the_site_takes_a_heartbeat_over_tls_only_with_the_servers_certificate(
    cluster: h.Cluster, tmp_path: Path
) -> None:
    site, dp1 = cluster.site, cluster.agents["dp1"]
    auth = {"Authorization": f"Bearer {dp1.token}"}  # the token alone, stolen say
    beat = {"boot_id": "x", "disk_free": 1, "installed": []}
    url = site.url + "/v1/agent/heartbeat"
    status, body = h.http_request("POST", url, beat, headers=auth)
    assert status == 401 and b"must come with its certificate" in body, body
    as_dp1 = h.as_server(site.home, "dp1", tmp_path)
    assert h.http_request("POST", url, beat, headers=auth, context=as_dp1)[0] == 200
