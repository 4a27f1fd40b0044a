"""The site server: the API agents talk to, and the despooler, in one process.

Routes (JSON unless noted):

* ``GET /healthz`` — anyone; 200 once the site is ready.
* ``GET /v1/site/authority`` — anyone: the site's certificate authority (PEM), which an
  agent checks against its token's fingerprint before it trusts the site (the discovery
  step: fetched over TLS without verification, then pinned).
* ``POST /v1/agent/hello`` — enrollment token: the server's name and the site public key.
* ``POST /v1/agent/certificate`` — enrollment token: a certificate for the agent's key,
  signed by the site's authority (see :mod:`packdist.site.enrollment`).
* ``POST /v1/agent/heartbeat`` — enrollment token: liveness, free disk, installed ids.
  Both answers carry ``interval``, the seconds the agent waits before its next heartbeat;
  under overload both may be shed: ``503`` with ``Retry-After`` (see
  :mod:`packdist.site.cadence`).
* ``POST /v1/chunks``, ``GET /v1/chunks/{digest}``, ``GET /v1/packages/{id}/manifest`` —
  enrollment token: a package's content; see :mod:`packdist.site.content_routes`.
* ``POST /v1/client/sources``, ``POST /v1/client/report`` — a client's token: where to
  fetch a package from, nearest first, and what a fetch took; see
  :mod:`packdist.site.client_desk` (the chunk routes take a client's token too).
* ``POST /v1/child/report`` — a child site's token: its servers (see
  :mod:`packdist.site.children`).
* the dashboard, its JSON API and ``/metrics`` — operator credential; see
  :mod:`packdist.site.dashboard`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from packdist.config import Settings
from packdist.core.names import split_listen
from packdist.despooler import Despooler, PeerSettings
from packdist.errors import AuthError, UserError
from packdist.http import (
    error_middleware,
    new_session,
)
from packdist.process import quiet_accept_errors, raise_open_files_limit, settle_collector
from packdist.protocol.messages import Heartbeat
from packdist.ratelimit import Bucket
from packdist.serving import guard, serve_until_stopped
from packdist.site import dashboard
from packdist.site.beats import Beats, json_body
from packdist.site.children import ChildDesk
from packdist.site.client_desk import ClientDesk
from packdist.site.content_routes import ContentRoutes, Reader
from packdist.site.enrollment import CertificateDesk
from packdist.site.home import SiteHome
from packdist.site.live_feed import ChangeFeed
from packdist.site.package_pull import PackagePulls
from packdist.site.parent_link import Joined, ParentLink, load_joined
from packdist.site.relay import Relay
from packdist.site.rollout_driver import rollout_loop
from packdist.site.serving_tls import SiteTLS, dialing_context, renewal_loop
from packdist.site.store_runner import StoreRunner
from packdist.site.validation import validation_loop
from packdist.store.base import ServerRecord
from packdist.store.wakeup import follow

log = logging.getLogger("packdist.site")

#: bytes a request body may hold: heartbeats (up to MAX_INSTALLED ids) and chunk requests
#: (up to MAX_BATCH digests with their bases) are the large ones; every other route takes a
#: small body or none (the login form has its own, smaller limit)
LARGE_BODY = 16 * 1024 * 1024
SMALL_BODY = 64 * 1024
#: a parent's install request carries the whole manifest (about 100 bytes per chunk), and a
#: child's report every server behind it with what each holds: as large as an agent takes
MANIFEST_BODY = 256 * 1024 * 1024


class SiteServer:
    def __init__(
        self,
        home: SiteHome,
        max_in_flight: int = 64,
        settings: Settings | None = None,
        parent: tuple[str, str] | None = None,
    ) -> None:
        self.home = home
        self.settings = settings or Settings()
        self.upload = Bucket(self.settings.transfer_upload_limit)
        self.library = home.library
        self.key = home.signing_key()
        self.db = StoreRunner(home.store())
        self.max_in_flight = max_in_flight
        self.site_name = ""
        self._despooler: Despooler | None = None
        self.beats = Beats(self.db)  # heartbeats: interval, liveness, shedding
        self.feed = ChangeFeed()  # what the dashboard's live pages wait on
        self.certificates = CertificateDesk(home.authority(), self.beats)
        self.content = ContentRoutes(self.beats, self.db, self.library, self.upload, self._reader)
        #: ``site serve --parent URL --token T``: this site reports to its parent
        self.parent = None if parent is None else ParentLink(home.root, *parent, self.db)
        joined = self.parent.joined if self.parent is not None else load_joined(home.root)
        self.beats.trusted = joined.trusted_keys if joined is not None else []
        if self.parent is not None:
            self.parent.on_joined = self._joined
        self.children = ChildDesk(self.db, self.key.public.hex, lambda: self.beats.trusted)
        self.clients = ClientDesk(
            self.db,
            self.key,
            self.settings.peers_location_label,
            heard=self.beats.liveness.last_heard,
            trusted=lambda: self.beats.trusted,
        )
        self.relay: Relay | None = None  # a child site: what its parent's sender calls
        if self.parent is not None:
            link = self.parent
            pulls = PackagePulls(
                self.db, self.library, link.url, link.token, link.streams, link.keys
            )
            self.relay = Relay(self.db, link, pulls)
        self.beats.admission.busy = self._moving_packages
        self.cadence, self.admission, self.liveness = (
            self.beats.cadence,
            self.beats.admission,
            self.beats.liveness,
        )

    def _joined(self, joined: Joined) -> None:
        """The parent's answer changed what this site trusts: its agents learn it with their
        next heartbeat, its children with their next report."""
        self.beats.trusted = joined.trusted_keys

    def _moving_packages(self) -> bool:
        """Whether the despooler has attempts under way (heartbeats give way to them)."""
        return self._despooler is not None and bool(self._despooler.in_flight)

    @property
    def despooler(self) -> Despooler:
        assert self._despooler is not None, "the site is not running"
        return self._despooler

    def app(self) -> web.Application:
        limits = {
            "POST /v1/agent/heartbeat": LARGE_BODY,
            "POST /v1/chunks": LARGE_BODY,
            "POST /v1/child/report": MANIFEST_BODY,
            "POST /v1/child/install": MANIFEST_BODY,
            "POST /login": dashboard.LOGIN_BODY,
        }
        app = web.Application(
            middlewares=[guard(limits, SMALL_BODY), error_middleware],
            client_max_size=MANIFEST_BODY,
        )
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/v1/site/authority", self.authority)
        app.router.add_post("/v1/agent/hello", self.hello)
        app.router.add_post("/v1/agent/certificate", self.certificates.certificate)
        app.router.add_post("/v1/agent/heartbeat", self.heartbeat)
        self.content.routes(app)
        self.children.routes(app)
        self.clients.routes(app)
        if self.relay is not None:
            self.relay.routes(app)
        dashboard.setup(app, self)
        return app

    async def _agent(self, request: web.Request) -> ServerRecord:
        return await self.beats.agent(request)

    async def _reader(self, request: web.Request) -> Reader:
        """Who asks for a package's content: an agent, else a child site this site sends
        packages to (with its link's bandwidth and windows), else a client (``packdist
        fetch``: one package's chunks per request); AuthError for anyone else."""
        try:
            return Reader((await self.beats.agent(request)).name)
        except AuthError:
            child = await self.children.child_or_none(request)
            if child is not None:
                return self.children.reader(child)
            client = await self.clients.client_or_none(request)
            if client is None:
                raise
            return self.clients.reader(client)

    # --- routes ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "site": self.site_name})

    async def authority(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.certificates.authority.pem, content_type="application/x-pem-file"
        )

    async def hello(self, request: web.Request) -> web.Response:
        now = time.time()
        if self.admission.overloaded(now):
            return self.beats.shed(request, now)
        server = await self.beats.agent(request, counted=True, certified=False)
        return web.json_response(
            {
                "server": server.name,
                "site": self.site_name,
                "site_public_key": self.key.public.hex,
                "interval": self.cadence.interval,
                # the sites above this one: their manifests are good too (said, empty too)
                "trusted_keys": self.beats.trusted,
            }
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        now = time.time()
        if self.admission.overloaded(now):
            return self.beats.shed(request, now)
        server = await self.beats.agent(request, counted=True)
        beat = Heartbeat.from_json(await json_body(request))
        woken = await self.beats.record(server.name, beat, now)
        if woken:
            log.info("%s is back: %d instruction(s) woken", server.name, woken)
            self.despooler.wake.set()
        return self.beats.answer(woken)

    # --- life cycle -----------------------------------------------------------------------

    async def run(self, listen: str, on_listening: Callable[[], None] | None = None) -> None:
        self.site_name = await self.db(lambda s: s.site_name())
        self.children.site_name = self.site_name
        site_tls = None
        if self.settings.plain_http:
            log.warning("serving plain HTTP (--plain-http): traffic can be read on the path")
            session = new_session(tls=dialing_context(self.home.root))  # https:// agents still
        else:
            site_tls = await asyncio.to_thread(
                SiteTLS,
                self.home.root,
                self.certificates.authority,
                self.site_name,
                _listen_host(listen),
                self.settings.tls_hosts,
            )
            session = new_session(tls=site_tls.client)
        await self.beats.start()
        self._despooler = Despooler(
            self.db,
            self.key,
            session,
            policy=self.settings.retry_policy(),
            max_in_flight=self.max_in_flight,
            peers=PeerSettings(self.settings.peers_enabled, self.settings.peers_location_label),
            library=self.library,
            on_installed=self.liveness.installed,
            silent_after=self.beats.silent_after,
            on_retry=self.liveness.unreached,
            heard=self.liveness.last_heard,
        )
        despooler = asyncio.create_task(self.despooler.run(), name="despooler")
        flusher = asyncio.create_task(self.beats.flush_loop(), name="liveness")
        lag = asyncio.create_task(self.admission.watch_lag(), name="loop lag")
        rollouts = asyncio.create_task(
            rollout_loop(self.db, self.despooler.wake.set), name="rollouts"
        )
        background = [despooler, flusher, lag, rollouts]
        self.feed.attach(asyncio.get_running_loop())
        following = follow(self.db.store, self.feed.bump_threadsafe)  # SQLite: its file
        if following is None:  # PostgreSQL: no file to follow; the pages look on a beat
            background.append(asyncio.create_task(_beat(self.feed), name="live pages"))
        self.children.on_woken = lambda n: self.despooler.wake.set()
        if self.parent is not None:
            ca = self.certificates.authority.pem.decode()
            background.append(
                asyncio.create_task(self.parent.run(self.site_name, ca), name="parent link")
            )
        if site_tls is not None:
            background.append(asyncio.create_task(renewal_loop(site_tls), name="certificate"))
        interval = self.settings.validation_interval
        if interval > 0:  # scheduled validation, in the background: never blocks other work
            background.append(
                asyncio.create_task(
                    validation_loop(self.db, self.key, session, interval, self.despooler.wake.set),
                    name="validation",
                )
            )
        try:
            await serve_until_stopped(
                self.app(), listen, site_tls.server if site_tls is not None else None, on_listening
            )
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.beats.flush()
            await self.despooler.shutdown()
            if following is not None:
                following.close()
            await self.beats.stopped()
            await session.close()
            self.db.close()


async def _beat(feed: ChangeFeed, every: float = 1.5) -> None:
    while True:
        await asyncio.sleep(every)
        feed.bump()


def _listen_host(listen: str) -> str:
    try:
        return split_listen(listen)[0]
    except ValueError as exc:
        raise UserError(f"--listen {listen!r}: {exc}") from exc


def run_site(
    home: SiteHome,
    listen: str,
    max_in_flight: int,
    settings: Settings | None = None,
    parent: tuple[str, str] | None = None,
    on_listening: Callable[[], None] | None = None,
) -> None:
    logging.getLogger("packdist").setLevel(logging.INFO)
    if max_in_flight < 1:
        raise UserError("--workers must be at least 1")
    server = SiteServer(home, max_in_flight, settings, parent)

    async def main() -> None:
        # the process's own set-up for thousands of agents (see process.py): here, not in
        # SiteServer.run, which tests run inside their own process
        settle_collector()
        quiet_accept_errors(asyncio.get_running_loop())
        server.beats.files_limit = raise_open_files_limit()
        log.info("open files limit: %d", server.beats.files_limit)
        await server.run(listen, on_listening)

    # uvloop: at 10,000 agents, 0.26 ms of CPU per heartbeat instead of 0.32 and 464
    # instructions/s instead of 392 (docs/benchmarks.md); PACKDIST_EVENT_LOOP=asyncio
    # runs on asyncio's own loop, to compare
    if os.environ.get("PACKDIST_EVENT_LOOP", "uvloop") == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
        return
    asyncio.run(main())


__all__: list[Any] = ["SiteServer", "run_site"]
