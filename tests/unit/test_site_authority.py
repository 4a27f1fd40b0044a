"""The site's certificate authority and the TLS contexts built on it, over real handshakes on
loopback: what verifies, and everything that must not."""

from __future__ import annotations

import asyncio
import socket
import ssl
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from packdist.core import tls
from packdist.errors import UserError
from packdist.site.authority import LEAF_LIFETIME, SiteAuthority


@pytest.fixture
def ca(tmp_path: Path) -> SiteAuthority:
    return SiteAuthority.create(tmp_path / "site", "alpha", time.time())


def _holder(ca: SiteAuthority, folder: Path, name: str, hosts: list[str]) -> tuple[Path, Path]:
    """A key made by its holder, a certificate the authority signed from its request."""
    folder.mkdir(parents=True, exist_ok=True)
    key = tls.new_private_key()
    issued = ca.issue(tls.certificate_request(key), name, hosts, time.time())
    tls.save_key(key, folder / f"{name}.key")
    (folder / f"{name}.pem").write_bytes(issued.pem)
    return folder / f"{name}.pem", folder / f"{name}.key"


class _Server:
    """A TLS echo of the peer certificate's common name, on a thread of its own."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.presented = b""

    def handshake_with(self, client: ssl.SSLContext, host: str = "127.0.0.1") -> str:
        """The common name the server saw the client present ("" for none); raises what the
        client's side of the handshake raised. ``presented``: the server's certificate."""

        async def run() -> str:
            seen: list[str] = []

            async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                peer = w.get_extra_info("peercert") or {}
                names = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
                seen.append(names[0] if names else "")
                w.write(b"ok")
                await w.drain()
                w.close()

            server = await asyncio.start_server(on_client, sock=self.sock.dup(), ssl=self.ctx)
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, ssl=client, server_hostname=host
                )
                data = await reader.read(2)  # a refused client certificate shows up here
                self.presented = writer.get_extra_info("ssl_object").getpeercert(True)
                writer.close()
                if data != b"ok":
                    raise ssl.SSLError("the server closed the connection")
                return seen[0]
            finally:
                server.close()

        return self.loop.run_until_complete(asyncio.wait_for(run(), 10))

    def close(self) -> None:
        self.sock.close()
        self.loop.close()


@pytest.fixture
def serving(ca: SiteAuthority, tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    ca_path = SiteAuthority.paths(tmp_path / "site")[0]
    cert, key = _holder(ca, tmp_path / "dp1", "dp1", ["127.0.0.1", "dp1.example"])
    server = _Server(tls.server_context(cert, key, ca_path, require_client=True))
    try:
        yield server, ca_path
    finally:
        server.close()


def test_site_init_makes_an_authority_whose_key_only_its_owner_reads(tmp_path: Path) -> None:
    ca = SiteAuthority.create(tmp_path / "site", "alpha", time.time())
    cert_path, key_path = SiteAuthority.paths(tmp_path / "site")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    loaded = SiteAuthority.load(tmp_path / "site")
    assert loaded.fingerprint == ca.fingerprint
    assert tls.matches_fingerprint(cert_path.read_bytes(), ca.fingerprint)
    constraints = loaded.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0


def test_a_second_authority_is_refused_in_the_same_home(tmp_path: Path) -> None:
    SiteAuthority.create(tmp_path / "site", "alpha", time.time())
    with pytest.raises(UserError, match="already exists"):
        SiteAuthority.create(tmp_path / "site", "alpha", time.time())


def test_a_fingerprint_names_one_certificate_and_nothing_malformed_matches(
    ca: SiteAuthority, tmp_path: Path
) -> None:
    other = SiteAuthority.create(tmp_path / "other", "beta", time.time())
    assert tls.matches_fingerprint(ca.pem, ca.fingerprint)
    assert not tls.matches_fingerprint(other.pem, ca.fingerprint)
    for bad in ("", "sha256:", "sha256:!!!", ca.fingerprint[:-2], "md5:" + ca.fingerprint[7:]):
        assert not tls.matches_fingerprint(ca.pem, bad), bad
    assert not tls.matches_fingerprint(b"not a certificate", ca.fingerprint)


def test_an_issued_certificate_names_its_holder_and_hosts_and_lives_a_month(
    ca: SiteAuthority,
) -> None:
    key = tls.new_private_key()
    # the request asks for a name, an address and CA powers of its own: the site decides
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("*.example"), x509.DNSName("site")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    issued = ca.issue(greedy, "dp1", ["10.0.0.7", "DP1.lan"], time.time())
    cert = tls.load_certificate(issued.pem)
    ca.verify(cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dp1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert sans.get_values_for_type(x509.DNSName) == ["dp1.lan"]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["packdist:server/dp1"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert LEAF_LIFETIME <= lifetime <= LEAF_LIFETIME * 1.01
    assert issued.serial == cert.serial_number > 0


def test_a_request_that_is_garbage_or_tampered_with_is_refused(ca: SiteAuthority) -> None:
    good = tls.certificate_request(tls.new_private_key())
    der = bytearray(x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the signature's last byte: the request no longer proves its key
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    for bad in (b"", b"hello", tampered, good * 60):
        with pytest.raises(UserError):
            ca.issue(bad, "dp1", ["127.0.0.1"], time.time())
    with pytest.raises(UserError, match="hosts"):
        ca.issue(good, "dp1", [], time.time())
    for host in ("*.corp.example", "dpé.example", "", "a..b", "-x.example"):
        with pytest.raises(UserError, match="cannot be named in a certificate"):
            ca.issue(good, "dp1", [host], time.time())


def test_only_p256_keys_are_signed_and_long_names_do_not_break_a_certificate(
    ca: SiteAuthority,
) -> None:
    for curve in (ec.SECP192R1(), ec.SECP256K1(), ec.SECP384R1()):
        request = tls.certificate_request(ec.generate_private_key(curve))
        with pytest.raises(UserError, match="P-256"):
            ca.issue(request, "dp1", ["127.0.0.1"], time.time())
    name = "d" * 128  # the longest server name packdist takes; X.509 names take 64
    issued = ca.issue(tls.certificate_request(tls.new_private_key()), name, ["h1"], time.time())
    sans = tls.load_certificate(issued.pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"packdist:server/{name}"
    ]
    SiteAuthority.create(ca_home := Path(tempfile.mkdtemp()), "s" * 100, time.time())
    assert SiteAuthority.load(ca_home).fingerprint


def test_a_holder_of_the_sites_certificate_is_verified_both_ways(
    ca: SiteAuthority, tmp_path: Path, serving: tuple[_Server, Path]
) -> None:
    server, ca_path = serving
    cert, key = _holder(ca, tmp_path / "site-side", "site", ["127.0.0.1"])
    assert server.handshake_with(tls.client_context(ca_path, cert, key)) == "site"


def test_a_client_dialling_another_name_than_the_certificates_is_refused(
    ca: SiteAuthority, tmp_path: Path, serving: tuple[_Server, Path]
) -> None:
    server, ca_path = serving
    cert, key = _holder(ca, tmp_path / "site-side", "site", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
        server.handshake_with(tls.client_context(ca_path, cert, key), host="dp2.example")


def test_a_server_of_another_authority_is_refused(
    tmp_path: Path, serving: tuple[_Server, Path]
) -> None:
    server, _ = serving
    other = SiteAuthority.create(tmp_path / "other", "beta", time.time())
    cert, key = _holder(other, tmp_path / "other-side", "site", ["127.0.0.1"])
    other_ca = SiteAuthority.paths(tmp_path / "other")[0]
    with pytest.raises(ssl.SSLCertVerificationError):
        server.handshake_with(tls.client_context(other_ca, cert, key))


def test_a_client_without_a_certificate_of_the_site_is_refused_where_both_ends_are_ours(
    tmp_path: Path, serving: tuple[_Server, Path]
) -> None:
    server, ca_path = serving
    with pytest.raises((ssl.SSLError, ConnectionError)):
        server.handshake_with(tls.client_context(ca_path))
    other = SiteAuthority.create(tmp_path / "other", "beta", time.time())
    cert, key = _holder(other, tmp_path / "other-side", "intruder", ["127.0.0.1"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        server.handshake_with(tls.client_context(ca_path, cert, key))


def test_a_client_offering_only_tls_1_2_is_refused(
    ca: SiteAuthority, tmp_path: Path, serving: tuple[_Server, Path]
) -> None:
    server, ca_path = serving
    cert, key = _holder(ca, tmp_path / "site-side", "site", ["127.0.0.1"])
    old = tls.client_context(ca_path, cert, key)  # everything right but the version
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):  # the server hangs up
        server.handshake_with(old)
    assert server.handshake_with(tls.client_context(ca_path, cert, key)) == "site"


def test_a_renewed_certificate_is_presented_from_the_next_handshake_without_a_restart(
    ca: SiteAuthority, tmp_path: Path
) -> None:
    ca_path = SiteAuthority.paths(tmp_path / "site")[0]
    cert, key = _holder(ca, tmp_path / "dp1", "dp1", ["127.0.0.1"])
    ctx = tls.server_context(cert, key, ca_path, require_client=False)
    server = _Server(ctx)
    try:
        presented = []
        for renew in (False, True):
            if renew:
                cert, key = _holder(ca, tmp_path / "dp1-renewed", "dp1", ["127.0.0.1"])
                tls.reload(ctx, cert, key)
            server.handshake_with(tls.client_context(ca_path))
            issued = tls.load_certificate(cert.read_bytes())
            assert server.presented == issued.public_bytes(serialization.Encoding.DER)
            presented.append(server.presented)
        assert presented[0] != presented[1]
    finally:
        server.close()


def test_a_bundle_never_passes_for_the_authority_its_first_certificate_is(
    ca: SiteAuthority, tmp_path: Path
) -> None:
    stranger = SiteAuthority.create(tmp_path / "stranger", "stranger", time.time())
    for bundle in (ca.pem + stranger.pem, b"junk before\n" + ca.pem + stranger.pem):
        assert not tls.matches_fingerprint(bundle, ca.fingerprint)
        with pytest.raises(UserError, match="one PEM certificate"):
            tls.load_certificate(bundle)
    assert tls.matches_fingerprint(b"a comment first\n" + ca.pem, ca.fingerprint)
