"""The agent's side of its site: enrollment (the site's key and certificate authority
pinned), the agent's certificate, and the heartbeat loop.

The site key is pinned: once ``agent.json`` holds it, it is loaded at every start, whatever
spelling of the site's URL ``--site`` uses, and a site answering with another key is refused;
so is one showing another certificate authority (``agent/identity.py``).

The keys of the sites above it (``trusted_keys`` of its hello and heartbeat answers) are kept
beside it in ``agent.json``: manifests signed with them are installed too
(``agent/signers.py``); credentials are checked with the site's own key alone.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from packdist.agent.activation import active_packages
from packdist.agent.home import ENROLLMENT, AgentHome
from packdist.agent.identity import AgentIdentity, SiteIdentityChanged, SiteKeyChanged
from packdist.agent.peering import PeerService
from packdist.agent.refused import HomeOfAnotherServer, Refused, check_same_server
from packdist.agent.signers import TrustedSigners
from packdist.agent.transport import AgentTransport
from packdist.auth import token_fingerprint, token_secret
from packdist.core.signing import VerifyKey
from packdist.errors import AuthError, Overloaded, PackdistError, UserError
from packdist.protocol.messages import Heartbeat
from packdist.protocol.pace import trusted_keys_of
from packdist.protocol.site_api import HeartbeatPace, SiteClient, revoked_of, site_urls

log = logging.getLogger("packdist.agent")

ENROLL_RETRY = 2.0  # seconds between two tries to enroll
STRANGER_RETRY = 60.0  # seconds before asking again a site that is not the one pinned


class SiteLink:
    def __init__(
        self,
        home: AgentHome,
        site_url: str,
        token: str,
        peers: PeerService,
        plain_http: bool = False,
    ) -> None:
        self.home = home
        self.site_urls = site_urls(site_url)  # one site, maybe several workers
        self.token = token_secret(token)  # the credential; the rest names the site's authority
        self.site_ca = token_fingerprint(token)  # the authority pinned (agent/identity.py)
        self.boot_id = uuid.uuid4().hex
        self.site: SiteClient | None = None  # once the agent's HTTP sessions are open
        self.server_name: str | None = None
        #: the site's own key: the one key of credentials (auth.check_site_assertion)
        self.site_key: VerifyKey | None = None
        #: the site's key and those of the sites above: the keys of manifests, never of
        #: credentials
        self.signers: TrustedSigners | None = None
        self.pace = HeartbeatPace()
        self.identity = AgentIdentity(home.root)
        self.peers = peers  # told which servers the site removed
        self.port: int | None = None  # the port the agent serves on (said to the site)
        self.refused = Refused()  # the site refusing the token: backing off, said once
        self._load_pinned(site_url)
        self.transport = AgentTransport(self.identity, plain_http, self.site_ca)

    def _load_pinned(self, site_url: str) -> None:
        enrolled = self.home.load_enrollment()
        if enrolled is None:
            return
        if enrolled["site_url"].rstrip("/") not in self.site_urls:
            log.warning(
                "--site %s differs from the site this agent enrolled with (%s); keeping "
                "the site key pinned then: a site with another key will be refused",
                site_url,
                enrolled["site_url"],
            )
        above = enrolled.get("trusted_keys", [])  # none in a file older than the chain
        try:
            if not isinstance(above, list) or not all(isinstance(k, str) for k in above):
                raise PackdistError("trusted_keys is not a list of keys")
            self.site_key = VerifyKey.from_hex(enrolled["site_public_key"])
            self.signers = TrustedSigners.of(self.site_key, tuple(above))
        except PackdistError as exc:  # what VerifyKey.from_hex raises
            raise UserError(
                f"{self.home.root / ENROLLMENT}: corrupt enrollment file (bad site key or "
                "trusted_keys); remove it to enroll again"
            ) from exc
        self.server_name = enrolled["server"]
        self.site_ca = enrolled.get("site_ca") or self.site_ca  # pinned: kept as the key

    async def enroll(self) -> None:
        assert self.site is not None
        self.site.say_who(self.server_name, self.port)
        # the site's authority pinned (and checked) before the token is sent to it
        self.site_ca = await self.transport.discover(self.site, self.site_ca)
        answer = await self.site.hello()
        check_same_server(self.home.root, self.server_name, answer)
        key_hex = answer["site_public_key"]
        if self.site_key is not None and self.site_key.hex != key_hex:
            raise SiteKeyChanged(
                "the site's key differs from the one this agent enrolled with; refusing it "
                f"(remove {self.home.root / ENROLLMENT} to enroll again)"
            )
        self.site_ca = await self.identity.renew(self.site, self.site_ca)  # refuses a stranger
        self.transport.refresh()  # a new certificate served and presented from now on
        self.server_name = answer["server"]
        self.site_key = VerifyKey.from_hex(key_hex)
        above = trusted_keys_of(answer)
        if above is None:  # absent: none (an older site); malformed: the keys kept so far
            kept = self.signers.above_hex if self.signers is not None else ()
            above = kept if "trusted_keys" in answer else ()
        self.signers = TrustedSigners.of(self.site_key, above)
        self.pace.answered(answer)
        self.home.save_enrollment(
            {
                "site_url": self.site.base_url,
                "server": self.server_name,
                "site": answer["site"],
                "site_public_key": key_hex,
                "site_ca": self.site_ca,
                "trusted_keys": list(above),
            }
        )
        self.site.say_who(self.server_name, self.port)
        log.info("enrolled as %s with site %s", self.server_name, answer["site"])

    async def renew_certificate(self) -> None:
        """A certificate when due (see agent/identity.py); a newly pinned authority is
        written to the enrollment file."""
        if self.site is None or self.server_name is None:
            return
        pinned = await self.identity.renew(self.site, self.site_ca)
        self.transport.refresh()
        if pinned != self.site_ca:
            self.site_ca = pinned
            enrolled = self.home.load_enrollment()
            if enrolled is not None:
                self.home.save_enrollment({**enrolled, "site_ca": pinned})

    def take_trusted_keys(self, answer: dict[str, Any]) -> None:
        """The keys of the sites above, as a heartbeat answer names them (a site may join a
        parent after its agents enrolled): kept, and written to the enrollment file, when
        they differ from those held; an answer without them (or malformed) changes nothing."""
        above = trusted_keys_of(answer)
        if above is None or self.signers is None or above == self.signers.above_hex:
            return
        self.signers = TrustedSigners.of(self.signers.site, above)
        enrolled = self.home.load_enrollment()
        if enrolled is not None:
            self.home.save_enrollment({**enrolled, "trusted_keys": list(above)})
        log.info("manifests of %d site(s) above this one are now accepted", len(above))

    def heartbeat_payload(self) -> Heartbeat:
        """What a heartbeat says (reads the disk: run it in a thread)."""
        held = self.home.installed()  # one read of installed.json for both lists
        return Heartbeat(
            boot_id=self.boot_id,
            disk_free=self.home.free_bytes(),
            installed=sorted(set(held.values())),
            active=sorted(set(active_packages(self.home, held).values())),
        )

    async def heartbeat_loop(self, enrolled_now: bool) -> None:
        """Heartbeat at the interval the site names; sooner after a failure (so a server
        whose cable was pulled is heard from within seconds of its return); later, with
        jitter, when the site sheds heartbeats (so its load drops)."""
        pace = self.pace
        while True:
            wait = pace.interval if enrolled_now else ENROLL_RETRY
            try:
                if not enrolled_now:
                    await self.enroll()
                    enrolled_now = True
                assert self.site is not None
                # once due (60-75% into its life), and first: a lapsed certificate is
                # refused at the heartbeat's handshake, never at the request's
                await self.renew_certificate()
                payload = await asyncio.to_thread(self.heartbeat_payload)
                answer = await self.site.heartbeat(payload)
                self.refused.accepted()
                wait = pace.answered(answer)
                revoked = revoked_of(answer)
                if revoked is not None:  # removed servers: their peer credentials are void
                    self.peers.revoked = revoked
                self.take_trusted_keys(answer)
            except Overloaded as exc:
                wait = pace.shed(exc.retry_after)
                if pace.sheds == 1:  # one line per busy spell, not one per heartbeat
                    log.info("site busy (%s); heartbeats back off", exc.message)
            except (SiteKeyChanged, SiteIdentityChanged, HomeOfAnotherServer) as exc:
                enrolled_now = False  # nothing more for this site until it is ours again
                wait = STRANGER_RETRY  # an operator's matter: not a log line every 2 s
                log.error("%s", exc.message)
            except AuthError as exc:  # backing off to a minute, said once per cause
                wait = self.refused.again(exc.message, self.server_name)
            except PackdistError as exc:
                wait = pace.failed() if enrolled_now else ENROLL_RETRY
                log.warning("site unreachable: %s", exc.message)
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(wait)
