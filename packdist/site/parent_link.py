"""A child site's side of its parent (``site serve --parent URL --token TOKEN``): the
parent's authority pinned, then a report every few seconds, for as long as the child runs.

The child is a whole site: it serves its own servers whether or not the parent answers.
The link never stops the site; a parent that does not answer, or refuses the token, is
logged when that changes (not at every report) and tried again, at the parent's interval
while it answers and backing off to ``RETRY_MAX`` while it does not. A report is built from
the child's own store each time (its servers, what each holds, and its own children's
reports), so a parent that comes back learns the whole present state at once.

Trust: the token ``site add-child`` printed carries the fingerprint of the parent's
authority. Before anything else is sent to an ``https://`` parent, the child fetches the
authority without verifying, keeps it only if it is the one the token names, and writes it
to ``HOME/parent/ca.pem``; every report then verifies the parent against it (and that the
certificate is a site's). A token without a fingerprint is refused for an ``https://``
parent: a child has no first use to trust.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from packdist.auth import looks_like_token, token_fingerprint
from packdist.core import tls
from packdist.core.fsutil import write_atomic
from packdist.core.signing import VerifyKey
from packdist.errors import AuthError, PackdistError, RemoteError, TransferError, UserError
from packdist.http import WrongHolder, new_session
from packdist.protocol.chunk_stream import ChunkStreams
from packdist.protocol.hierarchy import ChildReport, ReportAnswer, ReportedServer
from packdist.protocol.parent_api import ParentClient
from packdist.service import Service
from packdist.site.store_runner import StoreRunner
from packdist.site.views import online, online_after
from packdist.store.core import Store

log = logging.getLogger("packdist.site")

RETRY_FIRST = 1.0  # seconds before the first retry of a report that failed
RETRY_MAX = 30.0  # and at most this long between two while the parent does not answer
LINK_FILE = "link.json"
REFUSED_RETRY = 60.0  # a refused token: the operator must act; asking often changes nothing


def check_parent(url: str, token: str) -> str:
    """The parent's URL as given to ``--parent``, checked with its token (UserError, one
    line, for either that cannot work)."""
    if not url.startswith(("http://", "https://")) or len(url) < 10:
        raise UserError(f"--parent {url!r} must be a URL starting with https:// (or http://)")
    if not looks_like_token(token):
        raise UserError(
            "--token is not a child site token (the one 'packdist site add-child' printed)"
        )
    if url.startswith("https://") and token_fingerprint(token) is None:
        raise UserError(
            "--token carries no fingerprint of the parent's certificate authority; use the"
            " token 'packdist site add-child' printed"
        )
    return url.rstrip("/")


def build_report(
    store: Store, site_name: str, now: float, ca_pem: str | None = None, parent: str | None = None
) -> ChildReport:
    """This site's servers (online as this site judges it) and what each holds: its own,
    and those its children reported (rows here too, named under them)."""
    servers = store.list_servers()
    held = store.verified_holdings()
    after = online_after(len(servers))
    reported = [
        ReportedServer(
            s.name,
            online(s, now, after),
            None if s.last_seen is None else max(0.0, now - s.last_seen),
            s.disk_free,
            tuple(held.get(s.name, ())),
        )
        for s in servers
    ]
    relayed = tuple(Service(store).relayed_unfinished(parent)) if parent else ()
    return ChildReport(site_name, tuple(reported), ca_pem, relayed)


@dataclass(frozen=True)
class Joined:
    """What a child learnt of its parent from its answers, kept in ``HOME/parent/link.json``
    so that it holds from the start after a restart: the name the parent gives this site,
    the parent's key (its credentials and manifests) and the keys above it (manifests)."""

    parent: str
    child: str
    key: str
    chain: tuple[str, ...]

    @property
    def trusted_keys(self) -> list[str]:
        """The keys this site's agents accept manifests from, besides this site's own."""
        return [k for k in (self.key, *self.chain) if k]

    def verify_key(self) -> VerifyKey | None:
        return VerifyKey.from_hex(self.key) if self.key else None


def load_joined(home: Path) -> Joined | None:
    """What this site learnt of its parent, if it ever reported to one."""
    try:
        doc = json.loads((home / "parent" / LINK_FILE).read_text())
        answer = ReportAnswer.from_json({"interval": 1, **doc})
    except FileNotFoundError:
        return None
    except (ValueError, UserError) as exc:
        log.warning("%s: unreadable (%s); learnt again from the parent", LINK_FILE, exc)
        return None
    return Joined(answer.parent, answer.child, answer.key, answer.chain)


def _stop_unwanted(store: Store, answer: ReportAnswer) -> None:
    """Stop the installs the parent sent and no longer wants (cancelled or superseded
    there while no attempt of its was under way to tell this site)."""
    service, now = Service(store), time.time()
    for package_id, server in answer.unwanted:
        if service.cancel_relayed(package_id, server, answer.parent, now):
            log.info(
                "parent %s no longer wants %s… on %s: stopped",
                answer.parent,
                package_id[:12],
                server,
            )


class ParentLink:
    def __init__(self, home: Path, url: str, token: str, db: StoreRunner) -> None:
        self.url = check_parent(url, token)
        self.token = token
        self.db = db
        self.home = home
        self.ca_path = home / "parent" / "ca.pem"
        self.pinned = token_fingerprint(token)
        self.joined = load_joined(home)
        #: called when the parent's answer changes what this site trusts (its agents learn it)
        self.on_joined: Callable[[Joined], None] = lambda joined: None
        self.context: ssl.SSLContext | None = None  # once the parent's authority is pinned
        self._streams: ChunkStreams | None = None

    def streams(self) -> ChunkStreams:
        """Chunk streams from the parent (what packages it sends are fetched with), over the
        TLS its authority was pinned for."""
        if self.context is None:
            raise TransferError("the parent's authority is not pinned yet")
        if self._streams is None:
            self._streams = ChunkStreams(self.context)
        return self._streams

    def keys(self) -> list[VerifyKey]:
        """The keys this site accepts the parent's packages signed with."""
        joined = self.joined
        return [] if joined is None else [VerifyKey.from_hex(k) for k in joined.trusted_keys]

    def _took(self, answer: ReportAnswer) -> None:
        joined = Joined(answer.parent, answer.child, answer.key, answer.chain)
        if joined == self.joined:
            return
        self.joined = joined
        doc = {**ReportAnswer(joined.parent, 1.0, joined.child, joined.key, joined.chain).to_json()}
        del doc["interval"]
        (self.home / "parent").mkdir(mode=0o700, exist_ok=True)
        write_atomic(self.home / "parent" / LINK_FILE, json.dumps(doc).encode(), mode=0o644)
        log.info("parent %s names this site %s", joined.parent, joined.child)
        self.on_joined(joined)

    async def run(self, site_name: str, ca_pem: str | None = None) -> None:
        """Report until cancelled; never raises for what the parent does or says."""
        context = self.context = await self._trust()
        session = new_session(tls=context)
        client = ParentClient(self.url, self.token, session)
        trouble: str | None = None  # what went wrong last, logged once until it changes
        wait, reported = RETRY_FIRST, False
        try:
            while True:
                try:
                    parent = self.joined.parent if self.joined is not None else None
                    report = await self.db(
                        functools.partial(
                            build_report,
                            site_name=site_name,
                            now=time.time(),
                            ca_pem=ca_pem,
                            parent=parent,
                        )
                    )
                    answer = await client.report(report)
                except WrongHolder as exc:  # the parent's certificate, not this site's token
                    trouble = self._trouble(trouble, f"parent {self.url}: {exc.message}")
                    await asyncio.sleep(REFUSED_RETRY)
                    continue
                except AuthError as exc:
                    trouble = self._trouble(trouble, f"the parent refused this site: {exc.message}")
                    await asyncio.sleep(REFUSED_RETRY)
                    continue
                except PackdistError as exc:
                    status = exc.status if isinstance(exc, RemoteError) else None
                    if status is not None and status < 500:
                        words = f"the parent refused the report: {exc.message}"
                    elif isinstance(exc, UserError):  # it answered, but not as a parent does
                        words = f"parent {self.url} answered oddly: {exc.message}"
                    else:
                        words = (
                            f"parent {self.url} unreachable: {exc.message}; this site goes on"
                            " serving its own servers"
                        )
                    trouble = self._trouble(trouble, words)
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, RETRY_MAX)
                    continue
                if trouble is not None or not reported:
                    log.info(
                        "reporting to parent site %s at %s (%d server(s))",
                        answer.parent,
                        self.url,
                        len(report.servers),
                    )
                trouble, wait, reported = None, RETRY_FIRST, True
                self._took(answer)
                if answer.unwanted:
                    await self.db(functools.partial(_stop_unwanted, answer=answer))
                await asyncio.sleep(answer.interval)
        finally:
            await session.close()
            if self._streams is not None:
                self._streams.close()

    @staticmethod
    def _trouble(before: str | None, now: str) -> str:
        if now != before:
            log.warning("%s", now)
        return now

    async def _trust(self) -> ssl.SSLContext:
        """A client context that trusts only the parent's authority, pinned first if it is
        not yet (retried until the parent answers: the site runs meanwhile)."""
        if not self.url.startswith("https://"):
            return tls.client_context(None)
        assert self.pinned is not None
        if self.ca_path.exists() and tls.matches_fingerprint(
            self.ca_path.read_bytes(), self.pinned
        ):
            return tls.client_context(self.ca_path)
        wait, said = RETRY_FIRST, None
        discovery = new_session(tls=tls.client_context(None), fresh_connections=True)
        try:
            while True:
                try:
                    pem = await ParentClient(self.url, self.token, discovery).authority(discovery)
                    if not tls.matches_fingerprint(pem, self.pinned):
                        raise AuthError(
                            "its certificate authority is not the one the token names:"
                            " refusing the parent"
                        )
                    ca = tls.load_certificate(pem)
                    break
                except PackdistError as exc:
                    said = self._trouble(said, f"parent {self.url}: {exc.message}")
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, RETRY_MAX)
        finally:
            await discovery.close()
        self.ca_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # what was parsed and checked is written, never the bytes as they came
        write_atomic(self.ca_path, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
        log.info("pinned the parent's certificate authority %s", self.pinned)
        return tls.client_context(self.ca_path)
