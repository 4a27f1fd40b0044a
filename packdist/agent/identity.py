"""The agent's TLS identity: a key made here that never leaves the agent's home, the
certificate the site signed for it, and the site's certificate authority, taken only when
it is the one the enrollment token names by fingerprint (kubeadm's discovery hash: the
token is all an agent needs to know the site).

Files, in ``tls/`` of the agent's home: ``agent.key`` (0600), ``agent.pem``, ``ca.pem``. A
certificate is renewed once two thirds of its life have passed, with no operator action.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from packdist.core import tls
from packdist.core.fsutil import write_atomic
from packdist.errors import AuthError, UserError
from packdist.protocol.messages import CertificateAnswer

log = logging.getLogger("packdist.agent")

RENEW_AFTER = 2 / 3  # of a certificate's life: then a new one is asked for
RETRY_AFTER = 300.0  # seconds after a refused or failed request before the next


class AgentIdentity:
    def __init__(self, home: Path) -> None:
        folder = home / "tls"
        self.key_path, self.cert_path, self.ca_path = (
            folder / "agent.key",
            folder / "agent.pem",
            folder / "ca.pem",
        )
        self._renew_at: float | None = None  # when the certificate held is due for renewal

    def request(self, name: str) -> str:
        """A certificate request for this agent's key (made on first use)."""
        if self.key_path.exists():
            key = tls.load_key(self.key_path)
        else:
            self.key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            key = tls.new_private_key()
            tls.save_key(key, self.key_path)
        return tls.certificate_request(key, name).decode()

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
            self._renew_at = start + RENEW_AFTER * (end - start)
        return now >= self._renew_at

    def retry_later(self, now: float | None = None) -> None:
        """The last request failed: not again for :data:`RETRY_AFTER` (one log line per
        try, not one per heartbeat)."""
        self._renew_at = (time.time() if now is None else now) + RETRY_AFTER

    def take(self, answer: CertificateAnswer, fingerprint: str | None) -> None:
        """Keep what the site signed, once it holds: the authority must be the one the
        token names (AuthError otherwise: a site that is not ours), the certificate must be
        the authority's and for this agent's key."""
        authority = answer.authority.encode()
        if fingerprint is not None and not tls.matches_fingerprint(authority, fingerprint):
            raise AuthError(
                "the site's certificate authority is not the one the enrollment token names:"
                " refusing it"
            )
        ca = tls.load_certificate(authority)
        cert = tls.load_certificate(answer.certificate.encode())
        try:
            cert.verify_directly_issued_by(ca)
        except Exception as exc:  # InvalidSignature, ValueError, TypeError: all "not theirs"
            raise AuthError(f"the certificate the site sent is not its authority's: {exc}") from exc
        ours = (
            tls.load_key(self.key_path)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        theirs = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if ours != theirs:
            raise AuthError("the certificate the site sent is not for this agent's key")
        write_atomic(self.ca_path, authority, mode=0o644)
        write_atomic(self.cert_path, answer.certificate.encode(), mode=0o644)
        self._renew_at = None
        log.info("certificate from the site, valid until %s", cert.not_valid_after_utc)
