"""The site's serving certificate: made by its authority for the host it listens on, kept
in its home, made again only when it is due, for other hosts or of another authority."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from packdist.core import tls
from packdist.errors import UserError
from packdist.site import serving_tls
from packdist.site.authority import LEAF_LIFETIME, SiteAuthority


def _cert(home: Path) -> x509.Certificate:
    return tls.load_certificate(serving_tls.paths(home)[0].read_bytes())


def _hosts(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in names if not isinstance(n, x509.UniformResourceIdentifier)}


def test_a_loopback_site_is_named_by_every_loopback_name_and_a_public_one_by_its_own() -> None:
    assert serving_tls.hosts_for("127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert serving_tls.hosts_for("site.example") == ["site.example"]
    assert serving_tls.hosts_for("10.0.0.5") == ["10.0.0.5"]
    every = serving_tls.hosts_for("0.0.0.0")
    assert {"localhost", "127.0.0.1", "::1"} <= set(every) and len(every) >= 3


def test_the_serving_certificate_is_made_once_and_kept_while_it_is_good(tmp_path: Path) -> None:
    home = tmp_path / "site"
    ca = SiteAuthority.create(home, "alpha", time.time())
    serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1")
    key_path = serving_tls.paths(home)[1]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    first = _cert(home)
    ca.verify(first)
    assert _hosts(first) == {"127.0.0.1", "localhost", "::1"}
    serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1")
    assert _cert(home).serial_number == first.serial_number, "made again while still good"


def test_the_serving_certificate_is_renewed_past_two_thirds_of_its_life_with_its_key_kept(
    tmp_path: Path,
) -> None:
    home = tmp_path / "site"
    now = time.time()
    ca = SiteAuthority.create(home, "alpha", now)
    serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1", now=now)
    first = _cert(home)
    key_before = serving_tls.paths(home)[1].read_bytes()
    later = now + 0.5 * LEAF_LIFETIME.total_seconds()
    serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1", now=later)
    assert _cert(home).serial_number == first.serial_number, "renewed halfway through"
    due = now + 0.7 * LEAF_LIFETIME.total_seconds()
    serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1", now=due)
    renewed = _cert(home)
    assert renewed.serial_number != first.serial_number
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    assert serving_tls.paths(home)[1].read_bytes() == key_before, "the key is kept"


def test_a_worker_listening_on_another_host_adds_its_name_and_takes_none_away(
    tmp_path: Path,
) -> None:
    home = tmp_path / "site"
    ca = SiteAuthority.create(home, "alpha", time.time())
    serving_tls.SiteTLS(home, ca, "alpha", "10.1.2.4")
    serving_tls.SiteTLS(home, ca, "alpha", "10.1.2.3")
    first = _cert(home)
    sans = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("10.1.2.4"),
    }
    # both named: the next start of either worker leaves the certificate as it is
    serving_tls.SiteTLS(home, ca, "alpha", "10.1.2.4")
    assert _cert(home).serial_number == first.serial_number, "the workers take turns"


def test_the_tls_hosts_setting_names_more_hosts_than_the_listen_one(tmp_path: Path) -> None:
    home = tmp_path / "site"
    ca = SiteAuthority.create(home, "alpha", time.time())
    serving_tls.SiteTLS(home, ca, "alpha", "0.0.0.0", "site.example.com,10.0.0.5")
    assert {"site.example.com", "10.0.0.5", "localhost"} <= _hosts(_cert(home))


def _served_serial(ctx: ssl.SSLContext, ca: Path) -> int:
    """The serial of the certificate a server using ``ctx`` presents at a new handshake."""

    async def handshake() -> int:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            client = ssl.create_default_context(cafile=str(ca))
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE  # renewed "in the future": only its serial read
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            return x509.load_der_x509_certificate(der).serial_number
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(handshake())


def test_a_running_site_renews_its_certificate_and_serves_the_new_one_with_no_restart(
    tmp_path: Path,
) -> None:
    home = tmp_path / "site"
    now = time.time()
    ca = SiteAuthority.create(home, "alpha", now)
    ca_pem = SiteAuthority.paths(home)[0]
    site = serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1", now=now)
    first = _cert(home).serial_number
    assert _served_serial(site.server, ca_pem) == first
    assert not site.renew(now + 0.5 * LEAF_LIFETIME.total_seconds()), "renewed while good"
    assert site.renew(now + 0.7 * LEAF_LIFETIME.total_seconds())
    renewed = _cert(home).serial_number
    assert renewed != first
    assert _served_serial(site.server, ca_pem) == renewed, "the old one still served"


def test_a_worker_puts_in_use_the_certificate_another_worker_of_its_home_renewed(
    tmp_path: Path,
) -> None:
    home = tmp_path / "site"
    now = time.time()
    ca = SiteAuthority.create(home, "alpha", now)
    one = serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1", now=now)
    two = serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1", now=now)
    assert one.renew(now + 0.7 * LEAF_LIFETIME.total_seconds())
    assert two.renew(now + 0.7 * LEAF_LIFETIME.total_seconds()), "the other's renewal unseen"
    assert _served_serial(two.server, SiteAuthority.paths(home)[0]) == _cert(home).serial_number


def test_a_certificate_of_another_authority_in_the_home_is_replaced(tmp_path: Path) -> None:
    home = tmp_path / "site"
    ca = SiteAuthority.create(home, "alpha", time.time())
    stranger = SiteAuthority.create(tmp_path / "stranger", "beta", time.time())
    key = tls.new_private_key()
    cert_path, key_path = serving_tls.paths(home)
    tls.save_key(key, key_path)
    cert_path.write_bytes(stranger.issue_for_key(key, "beta", ["127.0.0.1"], time.time()).pem)
    serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1")
    ca.verify(_cert(home))


def test_a_certificate_that_does_not_match_the_key_is_refused_and_the_old_one_still_served(
    tmp_path: Path,
) -> None:
    home = tmp_path / "site"
    ca = SiteAuthority.create(home, "alpha", time.time())
    site = serving_tls.SiteTLS(home, ca, "alpha", "127.0.0.1")
    served = _cert(home).serial_number
    other = tls.new_private_key()
    stray = tmp_path / "stray.pem"
    stray.write_bytes(ca.issue_for_key(other, "alpha", ["127.0.0.1"], time.time()).pem)
    with pytest.raises(UserError, match="not a usable certificate and key"):
        tls.reload(site.server, stray, serving_tls.paths(home)[1])
    assert _served_serial(site.server, SiteAuthority.paths(home)[0]) == served
