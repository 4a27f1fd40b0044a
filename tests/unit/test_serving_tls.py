"""The site's serving certificate: made by its authority for the host it listens on, kept
in its home, made again only when it is due, for other hosts or of another authority."""

from __future__ import annotations

import ipaddress
import stat
import time
from pathlib import Path

from cryptography import x509

from packdist.core import tls
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
    _, key_path = serving_tls.site_certificate(home, ca, "alpha", "127.0.0.1")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    first = _cert(home)
    ca.verify(first)
    assert _hosts(first) == {"127.0.0.1", "localhost", "::1"}
    serving_tls.site_certificate(home, ca, "alpha", "127.0.0.1")
    assert _cert(home).serial_number == first.serial_number, "made again while still good"


def test_the_serving_certificate_is_renewed_at_a_start_past_two_thirds_of_its_life(
    tmp_path: Path,
) -> None:
    home = tmp_path / "site"
    now = time.time()
    ca = SiteAuthority.create(home, "alpha", now)
    serving_tls.site_certificate(home, ca, "alpha", "127.0.0.1", now)
    first = _cert(home)
    key_before = serving_tls.paths(home)[1].read_bytes()
    later = now + 0.5 * LEAF_LIFETIME.total_seconds()
    serving_tls.site_certificate(home, ca, "alpha", "127.0.0.1", later)
    assert _cert(home).serial_number == first.serial_number, "renewed halfway through"
    due = now + 0.7 * LEAF_LIFETIME.total_seconds()
    serving_tls.site_certificate(home, ca, "alpha", "127.0.0.1", due)
    renewed = _cert(home)
    assert renewed.serial_number != first.serial_number
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    assert serving_tls.paths(home)[1].read_bytes() == key_before, "the key is kept"


def test_a_site_listening_on_another_host_gets_a_certificate_naming_it(tmp_path: Path) -> None:
    home = tmp_path / "site"
    ca = SiteAuthority.create(home, "alpha", time.time())
    serving_tls.site_certificate(home, ca, "alpha", "127.0.0.1")
    serving_tls.site_certificate(home, ca, "alpha", "10.1.2.3")
    cert = _cert(home)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]


def test_a_certificate_of_another_authority_in_the_home_is_replaced(tmp_path: Path) -> None:
    home = tmp_path / "site"
    ca = SiteAuthority.create(home, "alpha", time.time())
    stranger = SiteAuthority.create(tmp_path / "stranger", "beta", time.time())
    key = tls.new_private_key()
    cert_path, key_path = serving_tls.paths(home)
    tls.save_key(key, key_path)
    cert_path.write_bytes(stranger.issue_for_key(key, "beta", ["127.0.0.1"], time.time()).pem)
    serving_tls.site_certificate(home, ca, "alpha", "127.0.0.1")
    ca.verify(_cert(home))
