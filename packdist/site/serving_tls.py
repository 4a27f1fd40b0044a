"""The site's own serving certificate: signed by its authority for the host it listens on,
kept in ``HOME/tls/site.pem`` and ``site.key`` (0600), made or renewed at start when due.

Hosts named: the listen host; with a loopback one, ``localhost``, ``127.0.0.1`` and ``::1``
too (a lab reaches it by any of them); listening on every address, the machine's names and
the loopback ones (the site cannot know every address it will be dialled at: an agent
given an address the certificate does not name is refused by its own TLS check, so name the
site by its host name).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509

from packdist.core import tls
from packdist.core.fsutil import write_atomic
from packdist.core.timefmt import iso
from packdist.errors import UserError
from packdist.site.authority import HomeLock, SiteAuthority

log = logging.getLogger("packdist.site")

RENEW_AT = 2 / 3  # of a certificate's life: renewed at the first start past this
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]


def paths(home: Path) -> tuple[Path, Path]:
    """The site's serving certificate and its key."""
    return home / "tls" / "site.pem", home / "tls" / "site.key"


def hosts_for(listen_host: str) -> list[str]:
    """The hosts the serving certificate names for a site listening on ``listen_host``."""
    if tls.unspecified(listen_host):
        wanted = [socket.getfqdn(), socket.gethostname(), *LOOPBACK_NAMES]
    elif tls.loopback(listen_host):
        wanted = [listen_host, *LOOPBACK_NAMES]
    else:
        wanted = [listen_host]
    hosts: list[str] = []
    for host in wanted:
        try:
            hosts.append(tls.check_host(host))
        except UserError:  # a machine name a certificate cannot carry: not named
            continue
    return list(dict.fromkeys(hosts))


def _due(cert_path: Path, authority: SiteAuthority, hosts: list[str], now: float) -> str | None:
    """Why the certificate in ``cert_path`` must be made again (None: it is good)."""
    try:
        cert = tls.load_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        return "none yet"
    except UserError:
        return "unreadable"
    try:
        authority.verify(cert)
    except UserError:
        return "not of this site's authority"
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    if now >= start + RENEW_AT * (end - start):
        return "due for renewal"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "names no host"
    held = {str(n.value) for n in names if not isinstance(n, x509.UniformResourceIdentifier)}
    if not set(hosts) <= held:
        return "for other hosts"
    return None


def site_certificate(
    home: Path, authority: SiteAuthority, site_name: str, listen_host: str, now: float | None = None
) -> tuple[Path, Path]:
    """The paths of a serving certificate good for ``listen_host``, made or renewed first if
    it is missing, due, for other hosts or of another authority."""
    now = time.time() if now is None else now
    cert_path, key_path = paths(home)
    hosts = hosts_for(listen_host)
    if not hosts:
        raise UserError(f"--listen host {listen_host!r}: no name a certificate can carry")
    with HomeLock(home):
        why = _due(cert_path, authority, hosts, now)
        if why is None:
            return cert_path, key_path
        try:
            key = tls.load_key(key_path)
        except UserError:  # none yet, or damaged: a new one
            key = tls.new_private_key()
            tls.save_key(key, key_path)
        issued = authority.issue_for_key(key, site_name, hosts, now)
        write_atomic(cert_path, issued.pem, mode=0o644)
    log.info("serving certificate (%s): %s, until %s", why, ", ".join(hosts), iso(issued.not_after))
    return cert_path, key_path


def site_context(
    home: Path, authority: SiteAuthority, site_name: str, listen_host: str
) -> ssl.SSLContext:
    """What the site serves with: its certificate, a client's checked when presented (the
    dashboard's browser presents none; agents authenticate with their token)."""
    cert, key = site_certificate(home, authority, site_name, listen_host)
    ca, _ = SiteAuthority.paths(home)
    return tls.server_context(cert, key, ca, require_client=False)


def dialing_context(home: Path) -> ssl.SSLContext:
    """What the site dials its agents with (their ``https://`` URLs): their certificate
    must be of its authority and name the host dialled; its own is presented once it has
    one (``site validate`` in a home that never served presents none)."""
    cert, key = paths(home)
    ca, _ = SiteAuthority.paths(home)
    if cert.exists() and key.exists():
        return tls.client_context(ca, cert, key)
    return tls.client_context(ca)
