"""At enrollment an agent gets a certificate of the site's authority for a key it made itself,
with nothing handled by the operator; an agent whose token names another authority refuses
the site's. Real ``site serve`` and ``agent serve`` processes."""

from __future__ import annotations

import ipaddress
import json
import stat
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from packdist.auth import token_secret
from packdist.core import tls
from packdist.site.authority import SiteAuthority
from tests import harness as h


def test_an_agent_gets_a_certificate_of_the_site_for_its_own_key_at_enrollment(
    tmp_path: Path,
) -> None:
    c = h.start_cluster(tmp_path, ["dp1"])
    try:
        tls_dir = c.agents["dp1"].home / "tls"
        h.wait_until(lambda: (tls_dir / "agent.pem").exists(), 15, message="a certificate")
        site_ca = (c.site.home / "tls" / "ca.pem").read_bytes()
        assert (tls_dir / "ca.pem").read_bytes() == site_ca
        cert = tls.load_certificate((tls_dir / "agent.pem").read_bytes())
        cert.verify_directly_issued_by(tls.load_certificate(site_ca))
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dp1"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        key = tls_dir / "agent.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        mine = (
            tls.load_key(key)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        assert (
            cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == mine
        )
        first = cert.serial_number
        agent = c.agents["dp1"]
        agent.restart()  # a certificate still good is kept, not asked for again
        h.wait_until(
            lambda: agent.log_tail(400).count("enrolled as dp1") >= 2, 15, message="re-enrolled"
        )
        again = tls.load_certificate((tls_dir / "agent.pem").read_bytes())
        assert again.serial_number == first
    finally:
        c.close()


def test_an_agent_whose_token_names_another_authority_refuses_the_sites(tmp_path: Path) -> None:
    site = h.make_site(tmp_path)
    site.start()
    try:
        token = site.add_server("dp1", "http://127.0.0.1:9")
        stranger = SiteAuthority.create(tmp_path / "stranger", "stranger", time.time())
        forged = f"{token_secret(token)}.{stranger.fingerprint.removeprefix('sha256:')}"
        agent = h.Agent("dp1", tmp_path / "agent-dp1", tmp_path / "logs", site_url=site.url)
        agent.token = forged
        agent.start()
        try:
            h.wait_until(
                lambda: "not the one the enrollment token names" in agent.log_tail(200),
                15,
                message="the agent to refuse the site's authority",
            )
            assert not (agent.home / "tls" / "agent.pem").exists()
            assert not (agent.home / "tls" / "ca.pem").exists()
            assert not (agent.home / "agent.json").exists(), "enrolled with a stranger"
        finally:
            agent.stop()
    finally:
        site.stop()


def test_a_certificate_is_signed_only_for_a_token_and_a_request_that_holds(
    tmp_path: Path,
) -> None:
    site = h.make_site(tmp_path)
    site.start()
    try:
        token = site.add_server("dp1", "http://127.0.0.1:9")
        url = f"{site.url}/v1/agent/certificate"
        good = {"request": tls.certificate_request(tls.new_private_key()).decode()}
        status, body = h.http_request("POST", url, good)
        assert status == 401, body
        auth = {"Authorization": f"Bearer {token_secret(token)}"}
        lone_surrogate = {"request": "-----BEGIN \ud800"}
        for bad in ({}, {"request": 5}, {"request": "hello"}, {"request": "-----BEGIN x"}):
            status, body = h.http_request("POST", url, bad, headers=auth)
            assert status == 400 and b"request" in body, (bad, status, body)
        status, body = h.http_request("POST", url, lone_surrogate, headers=auth)
        assert status == 400, body
        status, body = h.http_request("POST", url, good, headers=auth)
        assert status == 200, body
        log = site.log_tail(200)
        assert "Traceback" not in log, log
    finally:
        site.stop()


def test_a_token_without_a_fingerprint_pins_the_first_authority_the_site_shows(
    tmp_path: Path,
) -> None:
    site = h.make_site(tmp_path)
    site.start()
    try:
        token = site.add_server("dp1", "http://127.0.0.1:9")
        agent = h.Agent("dp1", tmp_path / "agent-dp1", tmp_path / "logs", site_url=site.url)
        agent.token = token_secret(token)  # a token made before sites had an authority
        agent.start()
        try:
            h.wait_until(lambda: (agent.home / "tls" / "agent.pem").exists(), 15, message="a cert")
            ca = tls.load_certificate((site.home / "tls" / "ca.pem").read_bytes())
            pinned = json.loads((agent.home / "agent.json").read_text())["site_ca"]
            assert pinned == tls.fingerprint(ca)
            assert "names no certificate authority: pinning" in agent.log_tail(200)
        finally:
            agent.stop()
    finally:
        site.stop()
