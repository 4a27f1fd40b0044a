"""The agent's TLS: what it serves with and what it dials the site and its peers with.

* **Serving.** With the certificate the site signed for it (``tls/agent.pem``); until it has
  one (the site unreachable at its first start), with a temporary self-signed one for the
  same key, which no packdist client trusts: the site and peers refuse it, so nothing is
  sent to an agent that cannot yet prove what it is. The real one is put in use from the
  next handshake once the site signs it (:func:`packdist.core.tls.reload`), as a renewed
  one is; no restart. A client's certificate is checked when presented (``packdist
  fetch``'s clients and ``/healthz`` probes present none; the site and peers do).
* **Dialling.** ``https://`` URLs only with the pinned authority (``tls/ca.pem``), the host
  dialled checked, the agent's own certificate presented; an ``http://`` URL goes in clear
  (the scheme the operator gave decides).
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

from packdist.agent.identity import AgentIdentity, SiteIdentityChanged
from packdist.core import tls
from packdist.core.fsutil import write_atomic
from packdist.errors import AuthError, UserError
from packdist.protocol.site_api import SiteClient

log = logging.getLogger("packdist.agent")

TEMPORARY_HOSTS = ["localhost", "127.0.0.1"]  # a self-signed certificate names something


class AgentTransport:
    def __init__(self, identity: AgentIdentity, plain_http: bool = False) -> None:
        self.identity = identity
        self.plain_http = plain_http
        ca = identity.ca_path if identity.ca_path.exists() else None
        self._trusted = ca is not None
        self._loaded: int | None = None  # mtime of the certificate the contexts hold
        self.client = tls.client_context(ca)
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
            real = self._has_certificate()
            cert = ident.cert_path if real else self._temporary()
            ca = ident.ca_path if self._trusted else None
            self.server = tls.server_context(cert, ident.key_path, ca, require_client=False)
            if not real:
                self._loaded = None  # the real one, once it comes, is loaded by refresh
        return self.server

    def _temporary(self) -> Path:
        """A self-signed certificate for the agent's key, until the site signs one."""
        self.identity.request()  # makes the key on first use
        key = tls.load_key(self.identity.key_path)
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
            if self.server is not None:
                tls.trust(self.server, ident.ca_path)
            self._trusted = True
        if self._has_certificate():
            mtime = ident.cert_path.stat().st_mtime_ns
            if self._loaded != mtime:
                self.client.load_cert_chain(str(ident.cert_path), str(ident.key_path))
                if self.server is not None:
                    tls.reload(self.server, ident.cert_path, ident.key_path)
                self._loaded = mtime

    async def discover(self, site: SiteClient, pinned: str | None) -> str | None:
        """The site's authority pinned before anything else is sent to an ``https://``
        site; returns the fingerprint pinned now. SiteIdentityChanged when the site shows
        another than the one ``pinned`` names."""
        if self._trusted or not any(u.startswith("https://") for u in site.urls):
            return pinned
        pem = await site.authority()
        if pinned is not None and not tls.matches_fingerprint(pem, pinned):
            raise SiteIdentityChanged(
                "the site's certificate authority is not the one the enrollment token names"
                " (or this agent pinned): refusing the site"
            )
        try:
            ca = tls.load_certificate(pem)
        except UserError as exc:
            raise AuthError(f"the site sent no certificate authority: {exc.message}") from exc
        if pinned is None:
            log.warning(
                "the enrollment token names no certificate authority: pinning the site's"
                " first (%s); enroll with a new token to have it checked",
                tls.fingerprint(ca),
            )
        self.identity.ca_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.identity.ca_path, pem, mode=0o644)
        self.refresh()
        log.info("pinned the site's certificate authority %s", tls.fingerprint(ca))
        return pinned or tls.fingerprint(ca)
