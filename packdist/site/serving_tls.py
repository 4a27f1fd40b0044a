"""The site's own serving certificate: signed by its authority for the host it listens on,
kept in ``HOME/tls/site.pem`` and ``site.key`` (0600), made at start and renewed past two
thirds of its life while the site runs (checked hourly), put in use with no restart.

Hosts named: the listen host; with a loopback one, ``localhost``, ``127.0.0.1`` and ``::1``
too (a lab reaches it by any of them); listening on every address, the machine's names and
the loopback ones; and the ``tls_hosts`` setting's (the site cannot know every address it
will be dialled at: an agent given one the certificate does not name is refused by its own
TLS check, so name the site by its host name or list its addresses in ``tls_hosts``). A
certificate made again keeps the names the last one had: several workers of one home
listening on different hosts share one certificate naming them all.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509

from packdist.core import tls
from packdist.core.fsutil import write_atomic
from packdist.core.names import check_host
from packdist.core.timefmt import iso
from packdist.errors import UserError
from packdist.site.authority import HomeLock, SiteAuthority

log = logging.getLogger("packdist.site")

RENEW_AT = 2 / 3  # of a certificate's life: renewed at the first check past this
RENEW_CHECK = 3600.0  # seconds between two checks while the site runs
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]


def paths(home: Path) -> tuple[Path, Path]:
    """The site's serving certificate and its key."""
    return home / "tls" / "site.pem", home / "tls" / "site.key"


def hosts_for(listen_host: str, extra: str = "") -> list[str]:
    """The hosts the serving certificate names for a site listening on ``listen_host``, with
    ``extra`` (the ``tls_hosts`` setting: comma-separated) beside them."""
    if tls.unspecified(listen_host):
        wanted = [socket.getfqdn(), socket.gethostname(), *LOOPBACK_NAMES]
    elif tls.loopback(listen_host):
        wanted = [listen_host, *LOOPBACK_NAMES]
    else:
        wanted = [listen_host]
    wanted += [h for h in extra.split(",") if h]
    hosts: list[str] = []
    for host in wanted:
        try:
            hosts.append(check_host(host))
        except UserError:  # a machine name a certificate cannot carry: not named
            continue
    return list(dict.fromkeys(hosts))


def _held_hosts(cert: x509.Certificate) -> list[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in names if not isinstance(n, x509.UniformResourceIdentifier)]


def _held(cert_path: Path, authority: SiteAuthority) -> x509.Certificate | str:
    """The certificate in ``cert_path`` if it is of this authority, else why not."""
    try:
        cert = tls.load_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        return "none yet"
    except (OSError, UserError):
        return "unreadable"
    try:
        authority.verify(cert)
    except UserError:
        return "not of this site's authority"
    return cert


def _due(held: x509.Certificate | str, hosts: list[str], now: float) -> str | None:
    """Why the certificate ``held`` (:func:`_held`) must be made again (None: it is good)."""
    if isinstance(held, str):
        return held
    start = held.not_valid_before_utc.timestamp()
    end = held.not_valid_after_utc.timestamp()
    if now >= start + RENEW_AT * (end - start):
        return "due for renewal"
    if not set(hosts) <= set(_held_hosts(held)):
        return "for other hosts"
    return None


def _renewed(
    home: Path, authority: SiteAuthority, site_name: str, hosts: list[str], now: float
) -> str | None:
    """Make the serving certificate again if it is due (the caller holds the home's lock);
    returns why it was made (None: it was good)."""
    cert_path, key_path = paths(home)
    held = _held(cert_path, authority)
    why = _due(held, hosts, now)
    if why is None:
        return None
    # the names a certificate of this authority already has are kept: workers of one site
    # listening on different hosts never take each other's name away
    kept = [] if isinstance(held, str) else _held_hosts(held)
    named = list(dict.fromkeys([*hosts, *kept]))
    try:
        key = tls.load_key(key_path)
    except UserError:  # none yet, or damaged: a new one
        key = tls.new_private_key()
        tls.save_key(key, key_path)
    issued = authority.issue_for_key(key, site_name, named, now)
    write_atomic(cert_path, issued.pem, mode=0o644)
    log.info("serving certificate (%s): %s, until %s", why, ", ".join(named), iso(issued.not_after))
    return why


class SiteTLS:
    """The site's two TLS contexts: what it serves with (its certificate; a client's checked
    when presented: the dashboard's browser presents none, agents authenticate with their
    token) and what it dials its agents' ``https://`` URLs with (their certificate must be of
    its authority and name the host dialled; its own is presented). :meth:`renew` makes the
    certificate again when due and puts it in both from the next handshake (no restart);
    another worker of the same home that renewed it first is noticed the same way."""

    def __init__(
        self,
        home: Path,
        authority: SiteAuthority,
        site_name: str,
        listen_host: str,
        extra: str = "",
        now: float | None = None,
    ) -> None:
        self.home = home
        self.authority = authority
        self.site_name = site_name
        self.hosts = hosts_for(listen_host, extra)
        if not self.hosts:
            raise UserError(f"--listen host {listen_host!r}: no name a certificate can carry")
        ca, _ = SiteAuthority.paths(home)
        self.server = tls.server_context(None, None, ca, require_client=False)
        self.client = tls.client_context(ca)
        self._loaded: tuple[int, int] | None = None  # (inode, mtime) of the certificate held
        self.renew(now)

    def renew(self, now: float | None = None) -> bool:
        """Make the certificate again if due and load it if it changed; whether it did."""
        self.renew_files(now)
        return self.load()

    def renew_files(self, now: float | None = None) -> None:
        """Make the certificate again if it is due (file work: run it in a thread)."""
        now = time.time() if now is None else now
        with HomeLock(self.home):
            _renewed(self.home, self.authority, self.site_name, self.hosts, now)

    def load(self) -> bool:
        """Put the certificate in the home in use if it is not the one held (renewed here
        or by another worker of the home); whether it was. Call it on the event loop's
        thread while the site serves: handshakes read the same contexts."""
        cert, key = paths(self.home)
        st = cert.stat()
        if self._loaded == (st.st_ino, st.st_mtime_ns):
            return False
        tls.reload(self.server, cert, key, self.client)  # the key is kept across renewals
        self._loaded = (st.st_ino, st.st_mtime_ns)
        return True


async def renewal_loop(site_tls: SiteTLS) -> None:
    """Renew the serving certificate while the site runs (a site up for months never serves
    an expired one); a failure is logged and tried again at the next check."""
    while True:
        await asyncio.sleep(RENEW_CHECK)
        try:
            await asyncio.to_thread(site_tls.renew_files)
            site_tls.load()  # on the loop's thread: no handshake reads a context mid-load
        except (UserError, OSError) as exc:
            log.error("cannot renew the site's serving certificate: %s", exc)
        except Exception:  # never the end of renewal: an expired certificate strands agents
            log.exception("cannot renew the site's serving certificate")


def dialing_context(home: Path) -> ssl.SSLContext:
    """What ``site validate``, other one-shot commands and a ``--plain-http`` site dial
    agents with: their certificate must be of the site's authority and name the host
    dialled; the site's own is presented while it is good (a home that never served, or
    whose certificate lapsed while it served plain HTTP, presents none)."""
    cert, key = paths(home)
    ca, _ = SiteAuthority.paths(home)
    try:
        held = _held(cert, SiteAuthority.load(home))
    except UserError:  # no authority to check it with
        held = "unreadable"
    good = (
        not isinstance(held, str)
        and held.not_valid_after_utc.timestamp() > time.time()
        and key.exists()
    )
    # an expired or foreign one would be refused at the handshake: better none
    return tls.client_context(ca, cert, key) if good else tls.client_context(ca)
