"""The site's side of its clients (``packdist fetch``): their token checked on every request
(a removed client is refused at once), their sources request answered, their reports taken.

* ``POST /v1/client/sources`` — ``{"package": "NAME@VERSION"}``: the signed manifest, the
  servers that hold it nearest first (:func:`packdist.service.clients.order_sources`) and
  the credential those servers' agents take (:func:`packdist.auth.client_assertion`).
* ``POST /v1/client/report`` — what a fetch took from each source, once in place: an event
  ("client c1 fetched app@2 (12.0 MiB from dp1)") and the counts of ``/metrics``.
* ``POST /v1/chunks`` — the site's own chunk streams take a client token too
  (:meth:`reader`), for the chunks of the one package the request names.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from packdist.auth import bearer, client_assertion, hash_token, looks_like_token
from packdist.core.names import parse_ref
from packdist.core.signing import SigningKey
from packdist.errors import AuthError
from packdist.protocol.client_api import (
    REPORT_PATH,
    SOURCES_PATH,
    FetchReport,
    SourcesAnswer,
    SourcesRequest,
)
from packdist.service import Service
from packdist.service.clients import order_sources
from packdist.site.beats import json_body
from packdist.site.content_routes import Reader
from packdist.site.store_runner import StoreRunner
from packdist.site.tracker import ALIVE_WITHIN, DEFAULT_LOCATION_LABEL
from packdist.store.clients import ClientRecord
from packdist.store.core import Store
from packdist.store.records import SwarmMember

REFUSED = "unknown or removed client token"


class ClientDesk:
    def __init__(
        self,
        db: StoreRunner,
        key: SigningKey,
        location_label: str = DEFAULT_LOCATION_LABEL,
        heard: Callable[[str], float | None] = lambda server: None,
        alive_within: float = ALIVE_WITHIN,
        trusted: Callable[[], list[str]] = list,
    ) -> None:
        self.db = db
        #: the keys of the sites above this one (a package pulled from a parent keeps the
        #: parent's signature): the client takes a manifest signed by this site or by them
        self.trusted = trusted
        self.key = key
        self.location_label = location_label
        self.heard = heard  # the site's own word on when a server was last heard
        self.alive_within = alive_within

    def routes(self, app: web.Application) -> None:
        app.router.add_post(SOURCES_PATH, self.sources)
        app.router.add_post(REPORT_PATH, self.report)

    async def client_or_none(self, request: web.Request) -> ClientRecord | None:
        """The client whose token the request carries, looked up on every request."""
        token = bearer(request.headers.get("Authorization"))
        if not looks_like_token(token):  # refused without a database lookup
            return None
        token_hash = hash_token(token)
        return await self.db(lambda s: s.client_by_token_hash(token_hash))

    async def client(self, request: web.Request) -> ClientRecord:
        found = await self.client_or_none(request)
        if found is None:
            raise AuthError(REFUSED)
        return found

    def reader(self, client: ClientRecord) -> Reader:
        """A client reading the site's chunk streams: the chunks of one package per request,
        a package of this site."""

        async def may_read(package_id: str) -> bool:
            return await self.db(lambda s: s.package_by_id(package_id)) is not None

        return Reader(f"client {client.name}", may_read=may_read)

    async def sources(self, request: web.Request) -> web.Response:
        client = await self.client(request)
        name, version = parse_ref(SourcesRequest.from_json(await json_body(request)).ref)
        now = time.time()

        def read(store: Store) -> tuple[str, bytes, bytes, list[SwarmMember]]:
            package = Service(store).client_asks(client, name, version, now)
            data, signature = store.package_manifest(package.id)
            return package.id, data, signature, store.swarm(package.id, now)

        package_id, data, signature, members = await self.db(read)
        offered = order_sources(
            members,
            client.label(self.location_label),
            self.location_label,
            now,
            self.alive_within,
            self.heard,
            seed=client.name,
        )
        answer = SourcesAnswer(
            client=client.name,
            package_id=package_id,
            manifest=data,
            signature=signature,
            site_public_key=self.key.public.hex,
            trusted_keys=tuple(self.trusted()),
            sources=tuple(offered),
            credential=client_assertion(self.key, client.name, package_id, now),
        )
        return web.json_response(answer.to_json())

    async def report(self, request: web.Request) -> web.Response:
        client = await self.client(request)
        report = FetchReport.from_json(await json_body(request))
        now = time.time()
        words = await self.db(lambda s: Service(s).client_fetched(client, report, now))
        return web.json_response({"ok": True, "event": words})
