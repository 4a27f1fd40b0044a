"""The agent's TLS: what it serves with and what it dials the site and its peers with.

* **Serving.** With the certificate the site signed for it (``tls/agent.pem``); until it has
  one (the site unreachable at its first start), with a temporary self-signed one for the
  same key, which no packdist client trusts: the site and peers refuse it, so nothing is
  sent to an agent that cannot yet prove what it is. The real one is put in use from the
  next handshake once the site signs it (:func:`packdist.core.tls.reload`), as a renewed
  one is; no restart. A client's certificate is checked when presented (``packdist
  fetch``'s clients and ``/healthz`` probes present none; the site and peers do).
* **Dialling.** ``https://`` URLs only with the pinned authority (``tls/ca.pem``), the host
  dialled checked; an ``http://`` URL goes in clear (the scheme the operator gave decides).
  Two contexts: :attr:`client` presents the agent's certificate (chunks and manifests from
  the site and peers, heartbeats); :attr:`anonymous` presents none (enrollment and the
  certificate request, which the token authenticates), so an agent whose certificate
  lapsed while it was off still gets a new one rather than being refused at the handshake.
* **A stale authority.** A ``tls/ca.pem`` that is not the one the agent pinned (its token
  or enrollment names another) is moved aside (``ca.pem.stale``), never trusted: the site's
  is discovered again.
* **Discovery.** An agent that has pinned no authority yet fetches it from the site
  (``GET /v1/site/authority``) over TLS *without* verifying, sends nothing else, and keeps
  it only if it is the one its token names by fingerprint (kubeadm's discovery pattern);
  a token that names none pins the first (trust on first use, with a warning). From then
  on every call to the site verifies it.
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path

from packdist.agent.identity import AgentIdentity, check_authority
from packdist.core import tls
from packdist.core.fsutil import write_atomic
from packdist.errors import AuthError, UserError
from packdist.protocol.site_api import SiteClient

log = logging.getLogger("packdist.agent")

TEMPORARY_HOSTS = ["localhost", "127.0.0.1"]  # a self-signed certificate names something


class AgentTransport:
    def __init__(
        self, identity: AgentIdentity, plain_http: bool = False, pinned: str | None = None
    ) -> None:
        self.identity = identity
        self.plain_http = plain_http
        ca = identity.ca_path if _holds(identity.ca_path, pinned) else None
        self._trusted = ca is not None
        self._loaded: int | None = None  # mtime of the certificate the contexts hold
        self.client = tls.client_context(ca)
        self.anonymous = tls.client_context(ca)
        self.server: ssl.SSLContext | None = None
        self.refresh()

    def _has_certificate(self) -> bool:
        return self.identity.cert_path.exists() and self.identity.key_path.exists()

    def serving_context(self) -> ssl.SSLContext | None:
        """What ``agent serve`` serves with (None with ``--plain-http``)."""
        if self.plain_http:
            return None
        if self.server is None:
            ident = self.identity
            ca = ident.ca_path if self._trusted else None
            if self._has_certificate() and self._loaded is not None:
                self.server = tls.server_context(ident.cert_path, ident.key_path, ca, False)
            else:  # none yet, or not usable: the real one, once it comes, loaded by refresh
                temporary = self._temporary()
                self.server = tls.server_context(temporary, ident.key_path, ca, False)
        return self.server

    def _temporary(self) -> Path:
        """A self-signed certificate for the agent's key, until the site signs one."""
        key = self.identity.key()  # made on first use
        path = self.identity.key_path.parent / "temporary.pem"
        write_atomic(path, tls.temporary_certificate(key, TEMPORARY_HOSTS, time.time()), 0o644)
        log.warning("no certificate from the site yet: serving with a temporary self-signed one")
        return path

    def refresh(self) -> None:
        """Put in use what the site gave since: its authority trusted, the agent's
        certificate presented and served from the next handshake."""
        ident = self.identity
        if not self._trusted and ident.ca_path.exists():
            tls.trust(self.client, ident.ca_path)
            tls.trust(self.anonymous, ident.ca_path)
            if self.server is not None:
                tls.trust(self.server, ident.ca_path)
            self._trusted = True
        if self._has_certificate():
            mtime = ident.cert_path.stat().st_mtime_ns
            if self._loaded != mtime:
                try:
                    serving = () if self.server is None else (self.server,)
                    tls.reload(self.client, ident.cert_path, ident.key_path, *serving)
                except UserError as exc:  # damaged: served and presented once renewed
                    log.warning("%s; a new certificate will be asked for", exc.message)
                    ident.cert_path.unlink(missing_ok=True)
                    return
                self._loaded = mtime

    async def discover(self, site: SiteClient, pinned: str | None) -> str | None:
        """The site's authority pinned before anything else is sent to an ``https://``
        site; returns the fingerprint pinned now. SiteIdentityChanged when the site shows
        another than the one ``pinned`` names."""
        if self._trusted or not any(u.startswith("https://") for u in site.urls):
            return pinned
        try:
            ca = check_authority(await site.authority(), pinned)
        except UserError as exc:  # (another authority is SiteIdentityChanged: not caught)
            raise AuthError(f"the site sent no certificate authority: {exc.message}") from exc
        pinned_now = self.identity.pin_authority(ca, pinned)
        self.refresh()
        log.info("pinned the site's certificate authority %s", pinned_now)
        return pinned_now


def _holds(ca_path: Path, pinned: str | None) -> bool:
    """Whether ``ca_path`` holds the authority ``pinned`` names (any one when none is); one
    that does not is moved aside."""
    try:
        pem = ca_path.read_bytes()
    except FileNotFoundError:
        return False
    if pinned is None:
        try:
            tls.load_certificate(pem)
            return True
        except UserError:
            pass
    elif tls.matches_fingerprint(pem, pinned):
        return True
    stale = ca_path.with_name(ca_path.name + ".stale")
    ca_path.replace(stale)  # kept for whoever looks into why, never trusted again
    log.warning(
        "%s is not the certificate authority this agent's token or enrollment names:"
        " not trusted (moved to %s), the site's will be discovered again",
        ca_path,
        stale.name,
    )
    return False
