"""Distribute and remove a package version from its dashboard page, for operators and
admins: ``POST /api/packages/{NAME@VERSION}/distribute`` and ``…/remove`` with a JSON body
``{"to": ["dp1", ...]}``, ``{"group": "G"}`` or ``{"all": true}`` (exactly one), answered
``{"job", "package", "servers": N, "by", "message"}``. The same use cases as ``packdist
distribute`` and ``package remove``, with the operator as who did it (their event names
them), and the same cross-site checks as the other writes
(:func:`packdist.site.operator_api.check_not_forged`). A viewer sees no form and is
answered 403; a bad body is 400 with the cause, and nothing is made."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from packdist.core.names import parse_ref
from packdist.errors import NotFound, UserError
from packdist.service import Service
from packdist.service.jobs import named
from packdist.service.targets import resolve_targets
from packdist.site.operator import Role
from packdist.site.operator_api import Caller, check_not_forged, require
from packdist.store.base import Store

if TYPE_CHECKING:
    from packdist.site.dashboard import Dashboard

MAX_BODY = 64 * 1024
MAX_NAMES = 10_000


def targets_of(store: Store, body: Any) -> list[str]:
    """The servers a body names (one of ``to``, ``group``, ``all``); UserError otherwise."""
    if not isinstance(body, dict):
        raise UserError('body must be {"to": [servers]}, {"group": "G"} or {"all": true}')
    chosen = [k for k in ("to", "group", "all") if body.get(k)]
    if len(chosen) != 1:
        raise UserError("name the targets with exactly one of to, group or all")
    if chosen == ["to"]:
        names = body["to"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError("to must be a list of server names")
        if len(names) > MAX_NAMES:
            raise UserError(f"to names more than {MAX_NAMES:,} servers: use a group")
        return resolve_targets(store, names=names)
    if chosen == ["group"]:
        if not isinstance(body["group"], str):
            raise UserError("group must be a group's name")
        return resolve_targets(store, group=body["group"])
    if body["all"] is not True:
        raise UserError("all must be true")
    return resolve_targets(store, every=True)


class PackageActions:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/packages/{ref}/distribute", self.act)
        app.router.add_post("/api/packages/{ref}/remove", self.act)

    async def act(self, request: web.Request) -> web.Response:
        action = request.path.rsplit("/", 1)[1]
        caller = await self.dashboard.api_guard(request)
        require(
            caller,
            Role.OPERATOR,
            f"{'distributing' if action == 'distribute' else 'removing'} a package",
        )
        check_not_forged(request, caller)
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise UserError(f"body larger than {MAX_BODY} bytes")
        try:
            body = await request.json()
        except ValueError:
            raise UserError("body must be JSON") from None
        ref = request.match_info["ref"]
        name, version = parse_ref(ref)

        def run(store: Store) -> tuple[str, list[str]]:
            pkg = store.find_package(name, version)
            if pkg is None:
                raise NotFound(f"no package {name}@{version}")
            servers = targets_of(store, body)
            service, now = Service(store, caller.name), time.time()
            if action == "distribute":
                return service.distribute(pkg.id, servers, now), servers
            return service.remove(pkg.id, servers, now), servers

        job_id, servers = await self.dashboard.site.db(run)
        words = "to" if action == "distribute" else "removed from"
        message = f"job {job_id}: {name}@{version} {words} {named(servers)} by {caller.name}"
        return web.json_response(
            {"job": job_id, "package": f"{name}@{version}", "servers": len(servers),
             "by": caller.name, "message": message},
            headers={"Cache-Control": "no-store"},
        )  # fmt: skip


def action_form(ref: str, caller: Caller, groups: list[str]) -> str:
    """The package page's distribute and remove form, for an operator or admin."""
    if not caller.operator.role.allows(Role.OPERATOR):
        return ""
    base = html.escape(f"/api/packages/{quote(ref, safe='@')}")
    options = "".join(
        f'<option value="group:{html.escape(g)}">group {html.escape(g)}</option>' for g in groups
    )
    return (
        f'<form class="actions target-form" data-by="{html.escape(caller.name)}">'
        '<label>to <select name="target"><option value="all">every server</option>'
        f'{options}<option value="to">these servers:</option></select></label> '
        '<input name="servers" placeholder="dp1,dp2" aria-label="servers"> '
        f'<button type="button" data-post="{base}/distribute" data-form="1">Distribute</button>'
        f'<button type="button" data-post="{base}/remove" data-form="1"'
        ' data-confirm="Remove this version from those servers?">Remove</button>'
        '<span class="action-result muted" role="status"></span></form>'
    )
