"""The site's certificate authority: made by ``site init``, it signs the site's own serving
certificate and each agent's at enrollment, so no operator ever handles a certificate file.

* ``tls/ca.key`` (mode 0600) and ``tls/ca.pem``: the authority, ten years, allowed to sign
  end certificates only (``path_length=0``). Its fingerprint travels in every enrollment
  token, which is how an agent knows the site before it has sent anything.
* End certificates live :data:`LEAF_LIFETIME` and name their holder twice: a URI
  ``packdist:server/NAME`` (or ``packdist:site/NAME``), which says who holds it whatever the
  host, and the hosts it is reached at (DNS names, addresses), which is what TLS checks.
  The common name is for people only. Each is good for serving and for presenting as a
  client. Keys are P-256: the site signs no other.

The site's serving certificate is made and renewed by ``site/serving_tls.py``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from packdist.core import tls
from packdist.core.fsutil import write_atomic
from packdist.errors import AlreadyExists, UserError

CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=30)  # renewed well before, without operator action
BACKDATE = dt.timedelta(minutes=5)  # a peer whose clock runs a little behind still takes it
MAX_HOSTS = 16  # names one certificate may carry
MAX_REQUEST = 16 * 1024  # bytes of a certificate request, at most
MAX_COMMON_NAME = 64  # characters X.509 allows in a common name
ROLES = ("server", "site")  # what the holder of a certificate is, in its packdist: URI


@dataclass(frozen=True)
class Issued:
    """A certificate the authority signed: its PEM, serial and end (the serial logged;
    revocation, not built yet, will keep it)."""

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
        """Make the authority of the site in ``home``: both files written in a folder of
        their own, then renamed into place whole (a crash leaves either no authority or a
        complete one), under a lock (workers starting together make one, not several)."""
        cert_path, key_path = cls.paths(home)
        folder = key_path.parent
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with HomeLock(home):
            if folder.exists():
                raise AlreadyExists(f"{folder} already exists: the site has its authority")
            key = tls.new_private_key()
            title = f"packdist site {site_name}"[:MAX_COMMON_NAME]
            start = dt.datetime.fromtimestamp(now, dt.UTC) - BACKDATE
            cert = (
                tls.self_signed(key, title, start, start + CA_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_usage(cert_sign=True), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
                .sign(key, hashes.SHA256())
            )
            staging = Path(tempfile.mkdtemp(prefix=".tls-", dir=home))
            try:
                tls.save_key(key, staging / key_path.name)
                pem = cert.public_bytes(serialization.Encoding.PEM)
                write_atomic(staging / cert_path.name, pem, mode=0o644)
                os.rename(staging, folder)  # mkdtemp made it 0700
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return cls(cert, key)

    @classmethod
    def load(cls, home: Path) -> SiteAuthority:
        cert_path, key_path = cls.paths(home)
        try:
            cert = tls.load_certificate(cert_path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"{cert_path}: the site has no certificate authority") from None
        key = tls.load_key(key_path)
        if key.public_key() != cert.public_key():
            raise UserError(f"{key_path} is not the key of {cert_path}: the authority is damaged")
        return cls(cert, key)

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
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
            public.curve, ec.SECP256R1
        ):
            raise UserError("certificate request: not a P-256 key (the only kind signed)")
        return self._sign(public, "server", name, hosts, now)

    def issue_for_key(
        self, key: ec.EllipticCurvePrivateKey, name: str, hosts: list[str], now: float
    ) -> Issued:
        """A certificate for a key the site holds itself (its own serving certificate)."""
        return self._sign(key.public_key(), "site", name, hosts, now)

    def _sign(
        self, public: ec.EllipticCurvePublicKey, role: str, name: str, hosts: list[str], now: float
    ) -> Issued:
        if not hosts or len(hosts) > MAX_HOSTS:
            raise UserError(f"a certificate names 1 to {MAX_HOSTS} hosts, not {len(hosts)}")
        assert role in ROLES, role
        holder = x509.UniformResourceIdentifier(f"packdist:{role}/{quote(name, safe='')}")
        start = dt.datetime.fromtimestamp(now, dt.UTC) - BACKDATE
        end = start + BACKDATE + LEAF_LIFETIME
        serial = x509.random_serial_number()
        title = name[:MAX_COMMON_NAME] or role
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, title)]))
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
            .add_extension(
                x509.SubjectAlternativeName([holder, *tls.subject_names(hosts)]), critical=False
            )
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


class HomeLock:
    """An exclusive lock on ``HOME/NAME`` (``.tls.lock`` by default) for as long as the
    ``with`` lasts (workers starting together make one authority, one serving certificate;
    commands changing the operators one at a time)."""

    def __init__(self, home: Path, name: str = ".tls.lock") -> None:
        self.path = home / name
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # closing drops the lock
