"""A child site's routes for its parent's sender: the parent drives each of the child's
servers through these as it drives an agent (:mod:`packdist.protocol.child_api`), and the
child does the work with its own parts: the package fetched once
(:mod:`packdist.site.package_pull`), then a job of its own per server, run by its own
despooler (a grandchild's server is a server here too, sent on the same way).

* ``POST /v1/child/install`` — an install request with ``server``: the answer is the
  install's status there, as an agent answers.
* ``GET /v1/child/installs/{package_id}?server=S&wait=W`` — its status (answered as soon as
  it changes, or after ``W`` seconds); 404 when the child knows no such install.
* ``POST /v1/child/installs/{package_id}/cancel?server=S`` — stop it.
* ``POST /v1/child/remove`` — a remove request with ``server``.

Each needs a credential of the parent (its key, learnt when the child joined), naming this
child as audience and the server as subject. What the parent is told names where the work
is: "at br: receiving from hq", "at br: sending to dp1", "at br: connection refused by …
(br retries it)".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from packdist.auth import bearer, check_site_assertion
from packdist.core.names import check_reported_name
from packdist.errors import AuthError, NotFound, UserError
from packdist.protocol.messages import InstallRequest, InstallStatus, RemoveRequest
from packdist.service import Service
from packdist.service.jobs import UNFINISHED
from packdist.site.beats import json_body
from packdist.site.package_pull import PackagePulls, Pull
from packdist.site.parent_link import Joined, ParentLink
from packdist.site.store_runner import StoreRunner
from packdist.states import InstructionState as S
from packdist.store.core import Store
from packdist.store.db import Row

MAX_WAIT = 5.0  # seconds a status question is held at most (the parent asks every 2 s)
LOOK_EVERY = 0.25  # seconds between two looks at the work while a question is held


class Relay:
    def __init__(self, db: StoreRunner, link: ParentLink, pulls: PackagePulls) -> None:
        self.db, self.link, self.pulls = db, link, pulls

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/child/install", self.install)
        app.router.add_get("/v1/child/installs/{package_id}", self.status)
        app.router.add_post("/v1/child/installs/{package_id}/cancel", self.cancel)
        app.router.add_post("/v1/child/remove", self.remove)

    async def _parent(self, request: web.Request, server: str) -> Joined:
        """What this site knows of its parent, if the request carries the parent's
        credential for this route and this server; AuthError otherwise."""
        joined = self.link.joined
        key = joined.verify_key() if joined is not None else None
        if joined is None or key is None:
            raise AuthError("this site has not joined its parent yet")
        token = bearer(request.headers.get("Authorization"))
        claims = check_site_assertion(token, key, joined.child, request.method, request.path)
        if claims.get("sub") != server:
            raise AuthError("the parent's credential is for another server")
        return joined

    async def _asked(self, request: web.Request, name: Any) -> tuple[str, Joined]:
        """The server a request of the parent names, and what this site knows of the
        parent: the credential checked before anything is looked up (a stranger learns
        nothing, not even which servers are here)."""
        server = check_reported_name(name)
        joined = await self._parent(request, server)
        if await self.db(lambda s: s.server(server)) is None:
            raise NotFound(f"no server {server} at this site")
        return server, joined

    async def install(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise UserError("install request must be a JSON object")
        asked = InstallRequest.from_json(body)
        server, joined = await self._asked(request, body.get("server"))
        manifest = self.pulls.verify(asked.manifest, asked.signature)
        pull = self.pulls.ensure(manifest, asked.signature, server)
        pid = manifest.id.hex
        if pull.done:  # every install request of the parent is work wanted now
            await self._job(pid, server, joined, asked.repair)
        return web.json_response((await self._state(pid, server, joined)).to_json())

    async def _job(self, pid: str, server: str, joined: Joined, repair: bool = False) -> None:
        """This site's own job for the server, unless one is under way or it holds the
        package (the despooler is woken by the commit)."""
        now = time.time()
        await self.db(lambda s: Service(s).relay_install(pid, server, joined.parent, repair, now))

    async def status(self, request: web.Request) -> web.Response:
        pid = request.match_info["package_id"]
        server, joined = await self._asked(request, request.query.get("server"))
        try:
            wait = min(max(float(request.query.get("wait", "0")), 0.0), MAX_WAIT)
        except ValueError:
            raise UserError("wait must be a number of seconds") from None
        first = await self._state(pid, server, joined)
        deadline = time.monotonic() + wait
        now = first
        while now == first and time.monotonic() < deadline and now.state == "installing":
            await asyncio.sleep(LOOK_EVERY)
            now = await self._state(pid, server, joined)
        if now.state == "unknown":
            raise NotFound(f"no install of {pid[:12]}… on {server} here")
        return web.json_response(now.to_json())

    async def cancel(self, request: web.Request) -> web.Response:
        pid = request.match_info["package_id"]
        server, joined = await self._asked(request, request.query.get("server"))
        now = time.time()
        await self.db(lambda s: Service(s).cancel_relayed(pid, server, joined.parent, now))
        return web.json_response((await self._state(pid, server, joined)).to_json())

    async def remove(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise UserError("remove request must be a JSON object")
        asked = RemoveRequest.from_json(body)
        server, joined = await self._asked(request, body.get("server"))
        pid = asked.package_id

        def look(s: Store) -> tuple[bool, bool, Row | None]:
            held = pid in s.holdings(server)
            installing = bool(s.unfinished_of_package(pid, [server], "install", UNFINISHED))
            return held, installing, s.newest_instruction_for(pid, server, "remove")

        held, installing, row = await self.db(look)
        if not held and not installing and (row is None or row["state"] == S.REMOVED.value):
            return web.json_response({"state": "removed"})
        if row is None or row["state"] not in (S.PENDING.value, S.SENDING.value):
            now = time.time()  # (a removal job supersedes an install still unfinished)
            await self.db(lambda s: Service(s).relay_remove(pid, server, joined.parent, now))
        return web.json_response(
            {"state": "removing", "error": f"at {joined.child}: removing from {server}"}
        )

    async def _state(self, pid: str, server: str, joined: Joined) -> InstallStatus:
        """How far the install the parent sent has come here (``unknown``: not at all)."""
        pull = self.pulls.pulls.get(pid)
        if pull is not None and not pull.done:
            return _pulling(pull, server, joined)
        row, held = await self._row(pid, server)
        stale = row is not None and row["state"] == S.INSTALLED.value and not held
        if pull is not None and (row is None or stale):  # fetched since: its job now
            await self._job(pid, server, joined)
            row, held = await self._row(pid, server)
        if row is None or (row["state"] == S.INSTALLED.value and not held):
            # "installed" only for what the server holds, verified, now: an old install
            # since removed (or found corrupt) is not the one the parent asks about
            return InstallStatus(pid, "installed" if held else "unknown")
        return _installing(pid, row, server, joined, pull)

    async def _row(self, pid: str, server: str) -> tuple[Row | None, bool]:
        def read(s: Store) -> tuple[Row | None, bool]:
            return s.newest_instruction_for(pid, server, "install"), s.holds_verified(server, pid)

        return await self.db(read)


def _pulling(pull: Pull, server: str, joined: Joined) -> InstallStatus:
    here = joined.child
    if pull.error is not None:
        return InstallStatus(
            pull.package_id,
            "failed",
            pull.ref,
            f"at {here}: {pull.error.message}",
            pull.error.kind.value,
        )
    return InstallStatus(
        pull.package_id,
        "installing",
        pull.ref,
        bytes_received=pull.received if server == pull.first else 0,
        bytes_wire=pull.wire if server == pull.first else 0,
        bytes_total=pull.total,
        bytes_done=pull.received,
        phase=f"at {here}: receiving from {joined.parent}, {_percent(pull.received, pull.total)}",
        progress=pull.received + pull.checked,
    )


def _installing(
    pid: str, row: Row, server: str, joined: Joined, pull: Pull | None
) -> InstallStatus:
    """The state of this site's own instruction, as the parent's despooler reads an
    agent's: installing (its progress grows with every byte and attempt), installed,
    failed (a retry here counts as a failed attempt there, with the cause: the parent's
    retry is woken by this site's report once it is installed), or cancelled."""
    here, state = joined.child, S(row["state"])
    wire = pull.wire if pull is not None and pull.first == server else 0
    common: dict[str, Any] = {
        "bytes_wire": wire,
        "bytes_received": wire,
        "bytes_total": row["bytes_total"],
        "bytes_done": row["bytes_done"] if state is not S.INSTALLED else row["bytes_total"],
    }
    if state is S.INSTALLED:
        return InstallStatus(pid, "installed", **common)
    if state is S.CANCELLED:
        cause = row["cancel_cause"] or "cancelled"
        return InstallStatus(pid, "cancelled", error=f"at {here}: {cause}", **common)
    if state in (S.RETRYING, S.FAILED):
        again = f"; {here} retries it" if state is S.RETRYING else ""
        return InstallStatus(
            pid,
            "failed",
            error=f"at {here}: {row['last_error'] or 'failed'}{again}",
            error_kind=row["error_kind"] or "transient",
            **common,
        )
    return InstallStatus(
        pid,
        "installing",
        phase=_sending_words(here, server, row, state),
        progress=int(row["bytes_sent"]) + int(row["attempts"]),
        **common,
    )


def _sending_words(here: str, server: str, row: Row, state: S) -> str:
    """Where this site's own attempt is: sending to its server, or, for a server behind
    one of its children, where that child says it is ("at br: at gc: receiving from br")."""
    if state is not S.SENDING:
        return f"at {here}: waiting for a worker to send to {server}"
    if "/" in server and row["phase"]:
        return f"at {here}: {row['phase']}"
    return f"at {here}: sending to {server}, {_percent(row['bytes_done'], row['bytes_total'])}"


def _percent(done: int, total: int) -> str:
    return f"{100 * done // total if total else 0}%"
