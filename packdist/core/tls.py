"""Transport security that both ends share: keys, certificate requests, fingerprints and the
TLS contexts every packdist link uses.

These contexts are TLS 1.3 and verify against the site's own certificate authority (see
``packdist/site/authority.py``), never the system's trust store: a packdist certificate is
only good for packdist, and a public one is never good for packdist. Both ends are checked
where both ends are ours — the one that connects verifies the name it dialled, the one that
accepts verifies that a certificate presented is of the same authority. The site and the
agents serve with them unless started with ``--plain-http``; the scheme of a URL
(``https://`` or ``http://``) decides whether a client dials with TLS.

Keys are ECDSA P-256: every TLS 1.3 stack takes them, the browsers that show the dashboard
included (they take no Ed25519 certificate).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import ssl
from pathlib import Path
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from packdist.core.fsutil import write_atomic
from packdist.core.names import check_host
from packdist.errors import UserError

FINGERPRINT_PREFIX = "sha256:"  # as kubeadm's discovery hash, but base64url, not hex


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    """Write a private key readable by its owner only (written whole, then renamed)."""
    write_atomic(path, key_pem(key), mode=0o600)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise UserError(f"{path}: no private key there") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UserError(f"{path}: not an ECDSA private key")
    return key


def certificate_request(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A certificate signing request (PEM) for ``key``, naming nothing: the authority
    decides all a certificate says (whose it is, where it is good, for how long)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_certificate(data: bytes) -> x509.Certificate:
    """The one PEM certificate ``data`` holds, or a UserError naming what is wrong with it.
    A bundle is refused: whoever checks the first certificate must be able to trust that it
    is all there is (an authority's fingerprint checked on the first of two would pin both
    once the bytes are written as they came)."""
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise UserError(f"not a PEM certificate ({exc})") from exc
    if len(found) != 1:
        raise UserError(f"expected one PEM certificate, found {len(found)}")
    return found[0]


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:`` and the base64url SHA-256 of the certificate's DER bytes: what an
    enrollment token carries of the site's authority."""
    der = cert.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).digest()
    return FINGERPRINT_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def matches_fingerprint(cert_pem: bytes, expected: str) -> bool:
    """Whether ``cert_pem`` is the one certificate ``expected`` names (a bundle or anything
    malformed never is)."""
    try:
        return fingerprint(load_certificate(cert_pem)) == expected  # public: no timing to hide
    except UserError:
        return False


def subject_names(hosts: list[str]) -> list[x509.GeneralName]:
    """The subject alternative names for ``hosts``: an IP address as an address, anything
    else as a DNS name (a name TLS can check either way); UserError for a host that is
    neither (:func:`check_host`)."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(check_host(h) for h in hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _context(purpose: ssl.Purpose, ca: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca is not None:  # None: trusting nothing yet (an agent before it pinned its site)
        trust(ctx, ca)
    return ctx


def trust(ctx: ssl.SSLContext, ca: Path) -> None:
    """Trust the site's authority in ``ctx`` from its next handshake on (a context made
    before the agent had pinned it trusts nothing until then)."""
    try:
        ctx.load_verify_locations(cafile=str(ca))  # the site's authority only
    except (ssl.SSLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc.strerror or exc
        raise UserError(f"{ca}: not a usable certificate authority ({why})") from exc


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, *more: ssl.SSLContext) -> None:
    try:
        # first into a context of its own: OpenSSL leaves a context that failed to take a
        # certificate and a key that do not match unable to complete any handshake
        ssl.SSLContext(ctx.protocol).load_cert_chain(str(cert), str(key))
        for each in (ctx, *more):
            each.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc.strerror or exc
        raise UserError(f"{cert} with {key}: not a usable certificate and key ({why})") from exc


def server_context(
    cert: Path | None, key: Path | None, ca: Path | None, require_client: bool
) -> ssl.SSLContext:
    """What a packdist server (the site, an agent) accepts connections with. With
    ``require_client`` a client must present a certificate of the same authority (links
    where both ends are ours); without it, one is checked when presented (the dashboard's
    browser presents none, nor does ``packdist fetch``). ``cert`` None: loaded later with
    :func:`reload`."""
    ctx = _context(ssl.Purpose.CLIENT_AUTH, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key)
    return ctx


def client_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """What a packdist client connects with: the server's certificate must be of the site's
    authority and name the host dialled; ``cert`` and ``key`` are presented when given.
    ``ca`` None: no server is trusted until :func:`trust` names the authority."""
    ctx = _context(ssl.Purpose.SERVER_AUTH, ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key)
    return ctx


def reload(ctx: ssl.SSLContext, cert: Path, key: Path, *more: ssl.SSLContext) -> None:
    """Put a renewed certificate in use in ``ctx`` (and ``more``): handshakes from now on
    present it, connections already open keep theirs (no restart, no dropped transfer); a
    UserError naming the files when they are not a usable pair (the contexts keep what they
    had: the pair is tried once, in a context of its own, first)."""
    _load_chain(ctx, cert, key, *more)


def self_signed(
    key: ec.EllipticCurvePrivateKey, title: str, start: dt.datetime, end: dt.datetime
) -> x509.CertificateBuilder:
    """A certificate builder for ``key`` named ``title`` by itself, valid from ``start`` to
    ``end``: the extensions, then signing with ``key``, are the caller's."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, title)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


def temporary_certificate(
    key: ec.EllipticCurvePrivateKey, hosts: list[str], now: float, days: int = 2
) -> bytes:
    """A self-signed certificate (PEM) for ``key`` at ``hosts``: what an agent serves with
    until the site has signed its own (no packdist client takes it: none trusts it)."""
    start = dt.datetime.fromtimestamp(now, dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        self_signed(key, "packdist unenrolled", start, start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(subject_names(hosts)), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    plain = host.strip("[]").lower()
    if plain == "localhost":
        return True
    try:
        return ipaddress.ip_address(plain).is_loopback
    except ValueError:
        return False


def unspecified(host: str) -> bool:
    """Whether ``host`` is a listen address meaning every address (``0.0.0.0``, ``::``)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""


def holder(peercert: object) -> str | None:
    """Who a verified peer certificate names as its holder (``server/NAME``, from its
    ``packdist:`` URI), from what ``ssl`` gives of it (``getpeercert()``); None when no
    certificate was presented or it names none."""
    if not isinstance(peercert, dict):
        return None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI" and isinstance(value, str) and value.startswith("packdist:"):
            role, _, name = value.removeprefix("packdist:").partition("/")
            return f"{role}/{unquote(name)}"  # the authority quotes a name (dp+1: dp%2B1)
    return None
