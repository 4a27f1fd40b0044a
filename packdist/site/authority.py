"""The site's certificate authority: made by ``site init``, it signs the site's own serving
certificate and each agent's at enrollment, so no operator ever handles a certificate file.

* ``tls/ca.key`` (mode 0600) and ``tls/ca.pem``: the authority, ten years, allowed to sign
  end certificates only (``path_length=0``). Its fingerprint travels in every enrollment
  token, which is how an agent knows the site before it has sent anything.
* End certificates live :data:`LEAF_LIFETIME` and name their holder twice: the common name
  is the server's (or ``site``), the subject alternative names are the hosts it is reached
  at, which is what TLS checks. Each is good for serving and for presenting as a client.

Not yet: the site and agents do not serve TLS with these yet (``docs/security.md``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from packdist.core import tls
from packdist.core.fsutil import write_atomic
from packdist.errors import UserError

CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=30)  # renewed well before, without operator action
BACKDATE = dt.timedelta(minutes=5)  # a peer whose clock runs a little behind still takes it
MAX_HOSTS = 16  # names one certificate may carry
MAX_REQUEST = 16 * 1024  # bytes of a certificate request, at most


@dataclass(frozen=True)
class Issued:
    """A certificate the authority signed: its PEM and serial (kept for revocation)."""

    pem: bytes
    serial: int
    not_after: float


class SiteAuthority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self._key = key

    @staticmethod
    def paths(home: Path) -> tuple[Path, Path]:
        """The authority's certificate and key in a site's home."""
        return home / "tls" / "ca.pem", home / "tls" / "ca.key"

    @classmethod
    def create(cls, home: Path, site_name: str, now: float) -> SiteAuthority:
        cert_path, key_path = cls.paths(home)
        if key_path.exists():
            raise UserError(f"{key_path} already exists: the site has its authority")
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = tls.new_private_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"packdist site {site_name}")])
        start = dt.datetime.fromtimestamp(now, dt.UTC) - BACKDATE
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        tls.save_key(key, key_path)  # the key first: a certificate alone marks nothing
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return cls(cert, key)

    @classmethod
    def load(cls, home: Path) -> SiteAuthority:
        cert_path, key_path = cls.paths(home)
        try:
            cert = tls.load_certificate(cert_path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"{cert_path}: the site has no certificate authority") from None
        return cls(cert, tls.load_key(key_path))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return tls.fingerprint(self.cert)

    def issue(self, request_pem: bytes, name: str, hosts: list[str], now: float) -> Issued:
        """Sign a certificate for ``name`` at ``hosts`` from a request whose signature holds;
        what the request itself asks for beyond its key is ignored: the site decides."""
        if len(request_pem) > MAX_REQUEST:
            raise UserError(f"certificate request of {len(request_pem)} bytes: too large")
        try:
            request = x509.load_pem_x509_csr(request_pem)
            public = request.public_key()
            holds = request.is_signature_valid
        except ValueError as exc:  # not PEM, or a key or signature that does not parse
            raise UserError(f"not a valid certificate request ({exc})") from exc
        if not holds:
            raise UserError("certificate request: its signature does not hold")
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise UserError("certificate request: not an ECDSA key")
        return self._sign(public, name, hosts, now)

    def issue_for_key(
        self, key: ec.EllipticCurvePrivateKey, name: str, hosts: list[str], now: float
    ) -> Issued:
        """A certificate for a key the site holds itself (its own serving certificate)."""
        return self._sign(key.public_key(), name, hosts, now)

    def _sign(
        self, public: ec.EllipticCurvePublicKey, name: str, hosts: list[str], now: float
    ) -> Issued:
        if not hosts or len(hosts) > MAX_HOSTS:
            raise UserError(f"a certificate names 1 to {MAX_HOSTS} hosts, not {len(hosts)}")
        start = dt.datetime.fromtimestamp(now, dt.UTC) - BACKDATE
        end = start + BACKDATE + LEAF_LIFETIME
        serial = secrets.randbits(63) | 1  # positive, never 0
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(tls.subject_names(hosts)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), serial, end.timestamp())

    def verify(self, cert: x509.Certificate) -> None:
        """UserError unless this authority signed ``cert``."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise UserError(f"certificate not issued by this site: {exc}") from exc


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
