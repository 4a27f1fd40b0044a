"""The agent's TLS identity: a key made here that never leaves the agent's home, the
certificate the site signed for it, and the site's certificate authority, taken only when
it is the one the enrollment token names by fingerprint (kubeadm's discovery hash). A token
without a fingerprint (made before sites had an authority) pins the first authority the
site shows, with a warning; from then on no other is taken.

Files, in ``tls/`` of the agent's home: ``agent.key`` (0600), ``agent.pem``, ``ca.pem``. A
certificate is renewed between 60% and 75% into its life (a fleet enrolled in one day does
not come back for its certificates in one minute), with no operator action.

The agent serves and dials with these (``agent/transport.py``). With an ``https://`` site
the authority is pinned before the token is sent (discovery, ``agent/transport.py``); with
an ``http://`` one (a site run with ``--plain-http``) it arrives in clear with the
certificate, and the check proves nothing against someone on the path.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from packdist.core import tls
from packdist.core.fsutil import write_atomic
from packdist.errors import AuthError, PackdistError, UserError
from packdist.protocol.messages import CertificateAnswer, CertificateRequest
from packdist.protocol.site_api import SiteClient

log = logging.getLogger("packdist.agent")

RENEW_BETWEEN = (0.60, 0.75)  # of a certificate's life: when a new one is asked for
RETRY_AFTER = 300.0  # seconds after a refused or failed request before the next
RETRY_WITHOUT = 5.0  # the same, for an agent that holds none, or an expired one


class SiteKeyChanged(AuthError):
    """The site answered with a key other than the one this agent pinned at enrollment."""


class SiteIdentityChanged(AuthError):
    """The site showed an authority other than the one this agent pinned (or its token
    names): it is not our site, or it was replaced; refused until an operator decides."""


class AgentIdentity:
    def __init__(self, home: Path, rng: random.Random | None = None) -> None:
        folder = home / "tls"
        self.key_path, self.cert_path, self.ca_path = (
            folder / "agent.key",
            folder / "agent.pem",
            folder / "ca.pem",
        )
        self._rng = rng or random.Random()
        self._renew_at: float | None = None  # when the certificate held is due for renewal

    def request(self) -> str:
        """A certificate request for this agent's key."""
        return tls.certificate_request(self.key()).decode()

    def key(self) -> ec.EllipticCurvePrivateKey:
        """This agent's key (made on first use, and made again when the one on disk is
        damaged: its certificate is then no use either)."""
        try:
            key = tls.load_key(self.key_path)
        except UserError as exc:
            if self.key_path.exists():
                log.warning("%s; making a new key (and asking for its certificate)", exc.message)
                self.cert_path.unlink(missing_ok=True)
            self.key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            key = tls.new_private_key()
            tls.save_key(key, self.key_path)
            self._renew_at = None
        return key

    def due(self, now: float | None = None) -> bool:
        """Whether this agent has no certificate yet, or one past its renewal point."""
        now = time.time() if now is None else now
        if self._renew_at is None:
            try:
                cert = tls.load_certificate(self.cert_path.read_bytes())
            except (FileNotFoundError, UserError):
                return True
            start = cert.not_valid_before_utc.timestamp()
            end = cert.not_valid_after_utc.timestamp()
            self._renew_at = start + self._rng.uniform(*RENEW_BETWEEN) * (end - start)
        return now >= self._renew_at

    def retry_later(self, now: float | None = None) -> None:
        """The last request failed: not again for :data:`RETRY_AFTER` (one log line per
        try, not one per heartbeat), or :data:`RETRY_WITHOUT` while the agent holds no good
        certificate (the site takes its heartbeats over TLS only with one)."""
        now = time.time() if now is None else now
        self._renew_at = now + (RETRY_AFTER if self._holds_good(now) else RETRY_WITHOUT)

    def _holds_good(self, now: float) -> bool:
        """Whether the agent holds a certificate that has not expired."""
        try:
            cert = tls.load_certificate(self.cert_path.read_bytes())
        except (OSError, UserError):
            return False
        return now < cert.not_valid_after_utc.timestamp()

    async def renew(self, site: SiteClient, pinned: str | None) -> str | None:
        """Ask the site for a certificate if one is due; returns the fingerprint of the
        authority pinned now (``pinned``, or the first one taken). SiteIdentityChanged when
        the site shows another authority; any other failure is logged once and retried
        after :data:`RETRY_AFTER` (a certificate is not needed yet to work)."""
        if not self.due():
            return pinned
        try:
            answer = await site.certificate(CertificateRequest(self.request()))
            return self.take(answer, pinned)
        except SiteIdentityChanged:  # asked again at each enrollment: never waved through
            raise
        except (PackdistError, OSError) as exc:  # unreachable, refused, a disk error
            self.retry_later()
            log.warning("no certificate from the site yet: %s", exc)
            return pinned

    def take(self, answer: CertificateAnswer, pinned: str | None) -> str:
        """Keep what the site signed, once it holds: the authority must be the pinned one,
        the certificate that authority's and for this agent's key. Returns the
        authority's fingerprint."""
        ca = check_authority(answer.authority.encode(), pinned)
        cert = tls.load_certificate(answer.certificate.encode())
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise AuthError(f"the certificate the site sent is not its authority's: {exc}") from exc
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        ours = (
            tls.load_key(self.key_path).public_key().public_bytes(serialization.Encoding.DER, spki)
        )
        if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != ours:
            raise AuthError("the certificate the site sent is not for this agent's key")
        pinned_now = self.pin_authority(ca, pinned)
        # what was parsed and checked is written, never the bytes as they came
        write_atomic(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        self._renew_at = None
        log.info("certificate from the site, valid until %s", cert.not_valid_after_utc)
        return pinned_now

    def pin_authority(self, ca: x509.Certificate, pinned: str | None) -> str:
        """Keep ``ca`` (checked by :func:`check_authority`) as the site's authority;
        returns its fingerprint. With ``pinned`` None, trust on first use, with a warning."""
        if pinned is None:
            log.warning(
                "the enrollment token names no certificate authority: pinning the site's"
                " first (%s); enroll with a new token to have it checked",
                tls.fingerprint(ca),
            )
        self.ca_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # what was parsed and checked is written, never the bytes as they came
        write_atomic(self.ca_path, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return pinned or tls.fingerprint(ca)


def check_authority(pem: bytes, pinned: str | None) -> x509.Certificate:
    """The one certificate ``pem`` holds, if it is the authority ``pinned`` names (any,
    when none is); SiteIdentityChanged when it is another, UserError when it is none."""
    if pinned is not None and not tls.matches_fingerprint(pem, pinned):
        raise SiteIdentityChanged(
            "the site's certificate authority is not the one the enrollment token names"
            " (or this agent pinned): refusing the site"
        )
    return tls.load_certificate(pem)
