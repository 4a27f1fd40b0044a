"""The agent's HTTP server; its enrollment and heartbeats are in ``agent/site_link.py``.

``GET /healthz`` answers anyone; every other route needs a credential signed by the site
key learned at enrollment, addressed to this server and bound to the request's method and
path. That key alone: the keys of the sites above (``agent/signers.py``) sign manifests an
install may carry, never a credential.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from packdist.agent import activation
from packdist.agent.activation import refuse_removal_of_active
from packdist.agent.home import DEFAULT_CACHE_LIMIT, AgentHome, is_package_id
from packdist.agent.inputs import expect_handler, no_route, query_seconds, read_json
from packdist.agent.installer import Installer, InstallState
from packdist.agent.peering import PeerService
from packdist.agent.refused import HomeOfAnotherServer
from packdist.agent.signers import TrustedSigners
from packdist.agent.site_link import ENROLL_RETRY, SiteLink
from packdist.agent.sources import PEER_TIMEOUTS, Peer, peer_chunks
from packdist.agent.validation import validate_installed
from packdist.auth import (
    ANY_PEER,
    PEER_CHUNKS_PATH,
    bearer,
    check_site_assertion,
)
from packdist.core.digest import Digest
from packdist.core.names import split_listen
from packdist.core.signing import VerifyKey
from packdist.errors import AuthError, IntegrityError, PackdistError, UserError
from packdist.http import (
    Frame,
    error_middleware,
    error_response,
    holds,
    new_session,
    peer,
    presented,
)
from packdist.protocol.chunk_stream import ChunkStreams, StreamStop, receive_window
from packdist.protocol.messages import (
    ActivateAnswer,
    ActivateRequest,
    InstallRequest,
    RemoveRequest,
)
from packdist.protocol.site_api import (
    DEFAULT_INTERVAL,
    SiteClient,
    site_urls,
)
from packdist.ratelimit import Bucket
from packdist.serving import guard, serve_until_stopped

log = logging.getLogger("packdist.agent")

#: ENROLL_RETRY: its home is agent/site_link.py now, re-exported for those who import it here
__all__ = ["ENROLL_RETRY", "HEARTBEAT_INTERVAL", "MAX_LONG_POLL", "Agent", "Limits", "run_agent"]

HEARTBEAT_INTERVAL = DEFAULT_INTERVAL  # until the site names its own (see HeartbeatPace)
FIRST_ENROLL_WAIT = 3.0  # at start-up, how long to wait for the site before serving anyway
MAX_LONG_POLL = 5.0
MAX_BODY = 256 * 1024 * 1024  # bytes of a request body (an install carries its manifest)


@dataclass(frozen=True)
class Limits:
    """An agent's bandwidth limits in bytes per second (0: none)."""

    download: float = 0.0  # from the site and peers together
    upload: float = 0.0  # to peers


#: the claims of the request's credential, checked by the auth middleware
CLAIMS = web.RequestKey("claims", dict[str, object])


class Agent:
    def __init__(
        self,
        home: AgentHome,
        site_url: str,
        token: str,
        limits: Limits | None = None,
        plain_http: bool = False,
    ) -> None:
        self.home = home
        self.limits = limits or Limits()
        self.download = Bucket(self.limits.download)
        self.session: aiohttp.ClientSession | None = None
        self.liveness: aiohttp.ClientSession | None = None
        self.streams: ChunkStreams | None = None
        self.peer_streams: ChunkStreams | None = None
        self.installer = Installer(
            home,
            self._fetch,
            source=peer(site_urls(site_url)[0]),
            peer_fetch=self._fetch_from_peer,
            download=self.download,
        )
        self.peers = PeerService(
            home, self.installer.chunk_view, self.installer.pulse, Bucket(self.limits.upload)
        )
        # enrollment, heartbeats, TLS
        self.link = SiteLink(home, site_url, token, self.peers, plain_http)
        self._background: list[asyncio.Task[None]] = []

    # what the site link learned at enrollment, read by the routes
    @property
    def site(self) -> SiteClient | None:
        return self.link.site

    @property
    def site_key(self) -> VerifyKey | None:
        return self.link.site_key

    @property
    def signers(self) -> TrustedSigners | None:
        return self.link.signers

    @property
    def server_name(self) -> str | None:
        return self.link.server_name

    def _fetch(self, digests: Any, bases: Any, stop: Any) -> Any:
        assert self.site is not None
        return self.site.chunks(digests, bases, stop)

    def _fetch_from_peer(
        self, p: Peer, package_id: str, digests: list[Digest], stop: StreamStop
    ) -> Iterator[Frame]:
        assert self.peer_streams is not None
        return peer_chunks(self.peer_streams, p, package_id, digests, stop)

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.home.prepare()
        activation.clear_leftovers(self.home)
        self.installer.recover()
        self.installer.trim_cache()  # the limit may have changed since the last run
        link = self.link
        self.session = new_session(tls=link.transport.client)
        # enrollment and certificate requests: the token is the credential, no certificate
        self.liveness = new_session(fresh_connections=True, tls=link.transport.anonymous)
        window = receive_window(self.limits.download)
        # chunks, read in worker threads
        self.streams = ChunkStreams(link.transport.client, receive_buffer=window)
        self.peer_streams = ChunkStreams(link.transport.client, PEER_TIMEOUTS, window)
        link.site = SiteClient(
            link.site_urls, link.token, self.session, self.liveness, self.streams
        )
        enrolled = False
        try:  # enroll before serving when the site answers, so no install finds us unready
            await asyncio.wait_for(link.enroll(), timeout=FIRST_ENROLL_WAIT)
            enrolled = True
        except HomeOfAnotherServer:  # the site answered: this home is not that server's
            await self.stop()
            raise
        except (PackdistError, TimeoutError) as exc:
            why = exc.message if isinstance(exc, PackdistError) else "no answer"
            log.warning("not enrolled yet (%s); serving and retrying in the background", why)
        self._background.append(
            asyncio.create_task(link.heartbeat_loop(enrolled), name="heartbeat")
        )

    async def stop(self) -> None:
        for t in self._background:
            t.cancel()
        for inst in self.installer.installs.values():
            if inst.task is not None:
                inst.task.cancel()
        for session in (self.session, self.liveness):
            if session is not None:
                await session.close()
        for streams in (self.streams, self.peer_streams):
            if streams is not None:
                streams.close()
        self.installer.stop_streams()

    # --- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[guard({}, MAX_BODY), self._auth_middleware, error_middleware],
            client_max_size=MAX_BODY,
        )
        app.router.add_get("/healthz", self.healthz, expect_handler=expect_handler)
        app.router.add_post("/v1/install", self.install, expect_handler=expect_handler)
        app.router.add_get(
            "/v1/installs/{package_id}", self.install_status, expect_handler=expect_handler
        )
        app.router.add_post(
            "/v1/installs/{package_id}/cancel", self.cancel_install, expect_handler=expect_handler
        )
        app.router.add_post("/v1/validate", self.validate, expect_handler=expect_handler)
        app.router.add_post("/v1/remove", self.remove, expect_handler=expect_handler)
        app.router.add_post("/v1/activate", self.activate, expect_handler=expect_handler)
        app.router.add_post(PEER_CHUNKS_PATH, self.peer_chunks, expect_handler=expect_handler)
        # last: every other path, so that expect_handler covers those too
        app.router.add_route("*", "/{anything:.*}", no_route, expect_handler=expect_handler)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/healthz":
            response: web.StreamResponse = await handler(request)
            return response
        try:
            credential = bearer(request.headers.get("Authorization"))
            if self.site_key is None or self.server_name is None:
                return error_response(503, "agent is not enrolled with its site yet")
            # a peer credential names no one server: it is good at any peer, on that route;
            # the site's own key, never one of a site above (those sign manifests only)
            peer_route = request.path == PEER_CHUNKS_PATH
            request[CLAIMS] = check_site_assertion(
                credential,
                self.site_key,
                (self.server_name, ANY_PEER) if peer_route else self.server_name,
                method=request.method,
                path=request.rel_url.raw_path,
            )
            if not peer_route and request.secure:  # the site's own, both ways over TLS
                _site_certificate_presented(request)
        except AuthError as exc:
            return error_response(401, exc.message)
        response = await handler(request)
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "enrolled": self.server_name is not None})

    async def install(self, request: web.Request) -> web.Response:
        asked = InstallRequest.from_json(await read_json(request))
        data, signature, repair = asked.manifest, asked.signature, asked.repair
        try:
            peers = Peer.parse_list(asked.peers, asked.peer_token)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise UserError(f"malformed install request: {exc}") from exc
        assert self.signers is not None  # enrolled: the middleware checked
        try:
            inst = await self.installer.start(
                data,
                signature,
                self.signers,
                repair=repair,
                peers=peers,
                me=self.server_name or "",
                job=asked.job,
            )
        except IntegrityError as exc:  # a bad signature or manifest: the request's fault
            raise UserError(f"install refused: {exc.message}") from exc
        return web.json_response(inst.to_json(), status=202)

    async def remove(self, request: web.Request) -> web.Response:
        """Remove an installed version: ``{"package_id": ID, "package": "NAME@VERSION"}``.

        Answers ``{"state": "removed"}`` once the tree is out of ``packages/`` (moved to the
        chunk cache, which is then trimmed to its limit); also when the agent did not hold
        it (``"was": "absent"``). Refused (409) while that version is being installed: the
        site retries."""
        asked = RemoveRequest.from_json(await read_json(request))
        pid, ref = asked.package_id, asked.package
        for inst in list(self.installer.installs.values()):
            if inst.state is InstallState.INSTALLING and (
                inst.package_id == pid or inst.ref == ref
            ):
                return error_response(
                    409, f"{ref} is being installed on this agent; removal refused until it ends"
                )
        refuse_removal_of_active(self.home, ref)
        self.installer.removing.add(ref)  # no install of it starts until this ends
        try:
            was = await asyncio.to_thread(self.home.remove_version, ref, pid)
        except OSError as exc:
            raise PackdistError(
                f"cannot remove {ref} on this agent: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else "")
            ) from exc
        finally:
            self.installer.removing.discard(ref)
        for key, i in list(self.installer.installs.items()):
            if i.ref == ref and i.state is not InstallState.INSTALLING:
                del self.installer.installs[key]  # a finished install's record: not current now
        await asyncio.to_thread(self.installer.trim_cache)
        return web.json_response(
            {"package_id": pid, "package": ref, "state": "removed", "was": was}
        )

    async def activate(self, request: web.Request) -> web.Response:
        """Make an installed version the active one (``packages/NAME/current``):
        ``{"package_id": ID, "package": "NAME@VERSION"}``; answers the version active
        before. Refused (400) for a version this agent does not hold; 422 (kind ``health``)
        when its health check (``"check": [program, args...]``) fails."""
        asked = ActivateRequest.from_json(await read_json(request))
        done = await activation.activate_checked(self.home, asked)
        if done.previous != done.package.partition("@")[2]:
            log.info("%s is active (was %s)", done.package, done.previous or "none")
        answer = ActivateAnswer(done.package, done.previous, done.checked)
        return web.json_response(answer.to_json())

    async def validate(self, request: web.Request) -> web.Response:
        """Re-hash installed trees against their manifests: ``{"package_ids": [...]}`` (all
        installed versions when absent or empty). Versions being installed are skipped."""
        body: Any = {}
        if request.can_read_body:
            body = await read_json(request)
        ids = body.get("package_ids") if isinstance(body, dict) else None
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(x, str) for x in ids)
        ):
            raise UserError('body must be {"package_ids": [id, ...]}')
        busy = {
            pid
            for pid, inst in self.installer.installs.items()
            if inst.state is InstallState.INSTALLING
        }
        results = await asyncio.to_thread(validate_installed, self.home, ids or None, busy)
        return web.json_response({"server": self.server_name, "results": results})

    async def peer_chunks(self, request: web.Request) -> web.StreamResponse:
        """Chunks of one package for a peer holding the site's credential for it."""
        try:  # the middleware checked the credential; its claims name the package
            return await self.peers.handle(request, request[CLAIMS])
        except AuthError as exc:
            return error_response(401, exc.message)

    async def cancel_install(self, request: web.Request) -> web.Response:
        """Stop an install under way: its instruction was cancelled at the site."""
        pid = request.match_info["package_id"]
        if not is_package_id(pid):
            raise UserError("not a package id (64 hex digits)")
        inst = self.installer.cancel(pid)
        if inst is None:
            return error_response(404, "no such install on this agent")
        if inst.task is not None and inst.cancel_requested:
            await asyncio.wait([inst.task], timeout=5.0)  # answer once it has stopped
        return web.json_response(inst.to_json())

    async def install_status(self, request: web.Request) -> web.Response:
        inst = self.installer.status(request.match_info["package_id"])
        if inst is None:
            return error_response(404, "no such install on this agent")
        # long poll: answer as soon as the install ends, or after ?wait= seconds (at most
        # MAX_LONG_POLL: a longer wait asked for is cut short, not refused)
        wait = min(query_seconds(request.query.get("wait", "0"), "wait"), MAX_LONG_POLL)
        if wait:
            await inst.wait(wait)
        return web.json_response(inst.to_json())


def _site_certificate_presented(request: web.Request) -> None:
    """AuthError unless the request came with a site's certificate (the site's assertion
    is the credential; the certificate proves the connection is the site's too)."""
    held = presented(request)
    if not holds(held, "site"):
        raise AuthError(
            f"a site's request must come with the site's certificate, not {held or 'none'}"
        )


def run_agent(
    root: Any,
    listen: str,
    site_url: str,
    token: str,
    limits: Limits | None = None,
    cache_limit: int = DEFAULT_CACHE_LIMIT,
    plain_http: bool = False,
) -> None:
    logging.getLogger("packdist").setLevel(logging.INFO)
    home = AgentHome(root, cache_limit=cache_limit)
    agent = Agent(home, site_url, token, limits, plain_http)
    agent.link.port = split_listen(listen)[1]  # said to the site (see agent/refused.py)
    if plain_http:
        log.warning("serving plain HTTP (--plain-http): traffic can be read on the path")

    async def main() -> None:
        await agent.start()
        try:
            await serve_until_stopped(agent.app(), listen, agent.link.transport.serving_context())
        finally:
            await agent.stop()

    asyncio.run(main())
