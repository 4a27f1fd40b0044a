"""The site's side of heartbeats: who is calling, what a heartbeat changes, what is
answered (the interval to keep), what is shed under overload, and the batched writes.

:mod:`packdist.site.cadence` says how often and when to shed, :mod:`packdist.site.liveness`
what this process heard; this module puts them on the request path, so the routes in
:mod:`packdist.site.server` stay a few lines each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import resource
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from packdist.auth import PEER_TTL, bearer, hash_token, looks_like_token
from packdist.errors import AuthError, StoreError, UserError
from packdist.http import error_response, presented
from packdist.protocol.messages import Heartbeat
from packdist.protocol.pace import MAX_INTERVAL, MAX_REVOKED, SHED_MAX
from packdist.service import Service
from packdist.service.presence import SEEN_EVERY
from packdist.serving import open_connections
from packdist.site.cadence import OFFLINE_INTERVALS, SILENT_AFTER, Admission, Cadence
from packdist.site.liveness import FLUSH_EVERY, TOKEN_CHECK_EVERY, Liveness
from packdist.site.refusals import Refusals
from packdist.site.store_runner import StoreRunner
from packdist.store.base import ServerRecord

log = logging.getLogger("packdist.site")

SHED_LOG_EVERY = 10.0  # seconds between two log lines counting shed heartbeats
#: past this share of the open-files limit in connections, heartbeats do not keep theirs
KEEP_ALIVE_SHARE = 0.8
JSON = "application/json"


class ClientGone(UserError):
    """The client hung up before its request's body arrived: nobody to answer."""


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:  # includes JSONDecodeError and bad UTF-8
        raise UserError(f"body is not JSON: {exc}") from exc
    except (ConnectionError, aiohttp.ClientPayloadError) as exc:  # one line, not a traceback
        log.info("%s %s: %s went away mid-request", request.method, request.path, request.remote)
        raise ClientGone("the client went away") from exc


class Beats:
    def __init__(self, db: StoreRunner) -> None:
        self.db = db
        self.cadence = Cadence()
        self.admission = Admission()
        self.liveness = Liveness(self.cadence.offline_after)
        self.refusals = Refusals(db)  # agents refused for a wrong token, told to operators
        self._enrolled = 0
        self._started = time.monotonic()
        # the common answer, encoded once for the interval and the removed servers it says
        self._quiet_answer, self._quiet_interval = b"", 0.0
        self._quiet_revoked: list[str] | None = None
        self._quiet_trusted: list[str] | None = None
        #: the keys of the sites above this one (a child site's parent, its parent...): agents
        #: accept manifests signed by them too (``trusted_keys`` in every answer)
        self.trusted: list[str] = []
        #: servers removed within a peer credential's life: every heartbeat answer names
        #: them, and peers refuse the credentials that name them (read every
        #: TOKEN_CHECK_EVERY: a removed server is refused by its peers within seconds)
        self.revoked: list[str] = []
        self.files_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # raised at start
        #: this process, as the store's record of running site workers names it
        # host:pid and a random part: two containers may share a host name and pid 1
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    async def start(self) -> None:
        """The fleet as enrolled, until this process has heard from it (see follow_fleet)."""
        self._enrolled = await self.db(lambda s: len(s.list_servers()))
        await self.read_revoked()
        now = time.time()
        await self.db(lambda s: s.site_worker_started(self.worker, now))
        self._started = time.monotonic()
        self.cadence.follow(self._enrolled)

    async def agent(
        self, request: web.Request, counted: bool = False, certified: bool = True
    ) -> ServerRecord:
        """The server whose enrollment token the request carries (AuthError if none, or if
        the request presented the certificate of another); ``certified``: over TLS, the
        request must come with that server's certificate too (all but enrollment and the
        certificate request itself, which an agent with none yet or a lapsed one makes);
        ``counted``: a lookup of the heartbeat path (see :meth:`store_call`)."""
        token = bearer(request.headers.get("Authorization"))
        if not looks_like_token(token):  # refused without a database lookup
            raise AuthError("unknown or revoked enrollment token")
        token_hash = hash_token(token)
        server = self.liveness.server_of(token_hash)  # looked up once, checked in bulk
        if server is None:
            server = await self.store_call(lambda s: s.server_by_token_hash(token_hash), counted)
            if server is None:
                await self.refusals.refused(request)
                raise AuthError("unknown or revoked enrollment token")
            self.liveness.remember_token(token_hash, server)
        # a certificate presented with the token must be that server's: one server's token
        # and another's certificate are two stolen things, not one server
        held = presented(request)
        if held is not None and held != f"server/{server.name}":
            raise AuthError(f"the certificate presented is {held}'s, not {server.name}'s")
        if held is None and certified and request.secure:
            raise AuthError(f"a request of {server.name} over TLS must come with its certificate")
        return server

    async def store_call(self, fn: Callable[[Any], Any], counted: bool) -> Any:
        """A store call; ``counted``: one of the heartbeat path's, which may hold at most
        ``STORE_SLOTS`` places in the store's queue (claims and the dashboard wait there)."""
        if not counted:
            return await self.db(fn)
        self.admission.waiting_on_store += 1
        try:
            return await self.db(fn)
        finally:
            self.admission.waiting_on_store -= 1

    async def record(self, server: str, beat: Heartbeat, now: float) -> int:
        """Take a heartbeat: in memory if it changes nothing, else in the store (waking the
        server's retrying work if it was offline or unreached); returns how many woke."""
        if self.liveness.quiet(server, beat, now):  # "still here": memory only
            return 0
        reached_again = self.liveness.reached_again(server)
        offline_after = self.cadence.offline_after()
        try:
            woken: int = await self.store_call(
                lambda s: Service(s).record_heartbeat(
                    server,
                    beat.boot_id,
                    beat.disk_free,
                    beat.installed,
                    now,
                    offline_after,
                    reached_again,
                    beat.active,
                ),
                counted=True,
            )
        except BaseException:
            self.liveness.forget(server)
            if reached_again:
                self.liveness.unreached(server)
            raise
        self.liveness.recorded(server, beat, now)
        return woken

    def answer(self, woken: int) -> web.Response:
        interval = self.cadence.interval
        quiet_stale = (
            interval != self._quiet_interval
            or self.revoked is not self._quiet_revoked
            or self.trusted is not self._quiet_trusted
        )
        if woken or quiet_stale:
            said: dict[str, object] = {"ok": True, "woken": woken, "interval": interval}
            if self.revoked:
                said["revoked"] = self.revoked
            # always said, empty too: a key no longer above this site is dropped by its agents
            said["trusted_keys"] = self.trusted
            body = json.dumps(said).encode()
            if woken:
                return self._closing_if_short(web.Response(body=body, content_type=JSON))
            self._quiet_answer, self._quiet_interval = body, interval
            self._quiet_revoked, self._quiet_trusted = self.revoked, self.trusted
        return self._closing_if_short(web.Response(body=self._quiet_answer, content_type=JSON))

    def _closing_if_short(self, resp: web.Response) -> web.Response:
        """Agents keep their connection between heartbeats while descriptors allow; past
        ``KEEP_ALIVE_SHARE`` of the open-files limit, a heartbeat's connection ends with its
        answer, so descriptors are held by requests under way, not by every agent."""
        if open_connections() > KEEP_ALIVE_SHARE * self.files_limit:
            resp.force_close()
        return resp

    def shed(self, request: web.Request, now: float) -> web.Response:
        """503 with Retry-After, the body unread; the server it came from (if this process
        knows its token) is still heard from: shedding never makes a server look offline."""
        wait = self.cadence.retry_after()
        token = bearer(request.headers.get("Authorization"))
        if looks_like_token(token):
            server = self.liveness.server_of(hash_token(token), stale_ok=True)
            if server is not None:  # the agent may wait up to SHED_MAX and half again
                self.liveness.heard(server.name, now, SHED_MAX * 1.5 + self.cadence.interval)
        resp = error_response(503, f"site busy: heartbeat shed, try again in {wait:g}s")
        resp.headers["Retry-After"] = str(math.ceil(wait))
        return resp

    def silent_after(self) -> float:
        """Seconds of silence after which the despooler and the tracker take a server for
        unreachable: follows the heartbeat interval."""
        return max(SILENT_AFTER, self.cadence.offline_after())  # the despooler's floor

    def follow_fleet(self) -> None:
        """The interval for the servers this process hears from; for its first intervals,
        at least for the fleet enrolled (not all of it has spoken yet)."""
        heard = self.liveness.servers()
        if time.monotonic() - self._started < OFFLINE_INTERVALS * MAX_INTERVAL:
            heard = max(heard, self._enrolled)
        self.cadence.follow(heard)

    async def flush(self) -> None:
        """Write what quiet heartbeats said since the last batch, in one transaction."""
        heard = self.liveness.take_dirty()
        if not heard:
            return
        now = time.time()
        try:
            back = await self.db(lambda s: Service(s).record_quiet_heartbeats(heard, now))
        except Exception as exc:  # the next heartbeat of each is recorded in full instead
            for name, _, _ in heard:
                self.liveness.forget(name)
            _log_failure("writing %d heartbeat(s) failed: %s", exc, len(heard))
            return
        for name in back:
            log.info("%s is online", name)

    async def read_revoked(self) -> None:
        """Which servers were removed within a peer credential's life (one query)."""
        since = time.time() - PEER_TTL
        try:
            revoked = await self.db(lambda s: s.servers_removed_since(since, MAX_REVOKED))
        except StoreError as exc:  # the list as last read stands; read again next time
            log.warning("reading the servers removed lately failed: %s", exc)
            return
        if revoked != self.revoked:
            self.revoked = revoked  # a new list: the common answer is encoded again

    async def check_tokens(self) -> None:
        """Drop the kept tokens of servers removed or enrolled again: one query for all."""
        kept = self.liveness.tokens_kept()
        if not kept:
            return
        try:
            valid = await self.db(lambda s: s.live_token_hashes(kept))
        except Exception as exc:  # kept until TOKEN_TTL; checked again next time
            _log_failure("checking %d enrollment token(s) failed: %s", exc, len(kept))
            return
        dropped = self.liveness.tokens_checked(kept, valid)
        if dropped:
            log.info("%d enrollment token(s) no longer valid: refused from now on", len(dropped))

    async def offline(self) -> None:
        """Servers this process stopped hearing from: each gets its "went offline" event
        (once, whichever worker sees it first); a server this process never heard from is
        not its to judge."""
        now = time.time()
        silent = self.liveness.went_silent(now)
        if not silent:
            return
        before = now - self.cadence.offline_after()
        try:
            gone = await self.db(lambda s: Service(s).record_offline(silent, before, now))
        except Exception as exc:  # judged again at the next tick
            self.liveness.silent_again(silent)
            _log_failure("recording %d server(s) offline failed: %s", exc, len(silent))
            return
        for name in gone:
            log.info("%s went offline", name)

    async def running(self) -> None:
        """Say in the store that this site process runs (commands read it)."""
        now = time.time()
        try:
            await self.db(lambda s: s.site_worker_seen(self.worker, now))
        except Exception as exc:  # said again at the next tick
            _log_failure("saying that this site worker runs failed: %s", exc)

    async def stopped(self) -> None:
        """Say in the store that this site process stopped (a clean stop)."""
        now = time.time()
        try:
            await self.db(lambda s: s.site_worker_stopped(self.worker, now))
        except Exception as exc:
            _log_failure("saying that this site worker stopped failed: %s", exc)

    async def flush_loop(self) -> None:
        told = checked = said = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self.flush()
            await self.offline()
            if time.monotonic() - said >= SEEN_EVERY:
                said = time.monotonic()
                await self.running()
            if time.monotonic() - checked >= TOKEN_CHECK_EVERY:
                checked = time.monotonic()
                await self.check_tokens()
                await self.read_revoked()
            self.follow_fleet()
            if time.monotonic() - told >= SHED_LOG_EVERY:  # one line a while, not one a shed
                told = time.monotonic()
                if words := self.admission.shed_lately():
                    log.info(
                        "overloaded: shed heartbeats and hellos: %s; interval %gs",
                        words,
                        self.cadence.interval,
                    )


def _log_failure(words: str, exc: Exception, *counts: int) -> None:
    """A store's failure in one line (``words`` takes ``counts``, then the error); anything
    else is a bug: with its traceback."""
    store = isinstance(exc, StoreError)
    log.log(logging.WARNING if store else logging.ERROR, words, *counts, exc, exc_info=not store)
