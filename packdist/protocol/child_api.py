"""The parent's client of a child site, for one of the child's servers: the same calls as
:class:`packdist.protocol.agent_api.AgentClient` ("install this signed manifest", "how far
are you?", "stop", "remove this version"), so the despooler drives a server behind a child
exactly as it drives its own. The child does the work: it fetches the package from this
site once, whatever the number of its servers, then installs it on them with its own
despooler (:mod:`packdist.site.relay`).

Each request carries a site credential of the parent (signed with its key, naming the
child as audience and the server as subject, for that method and path), and is made over
TLS checked against the child's own authority, which the child reported (``ca``) over the
link its token pinned.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

import aiohttp

from packdist.auth import site_assertion
from packdist.core.signing import SigningKey
from packdist.errors import RemoteError, UserError
from packdist.http import CONTROL, HOLDER_HEADER, request
from packdist.protocol.messages import InstallRequest, InstallStatus, RemoveRequest

RELAY = "/v1/child"


class ChildClient:
    def __init__(
        self,
        child: str,
        server: str,
        base_url: str,
        key: SigningKey,
        session: aiohttp.ClientSession,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.child = child  # the child's name here
        self.server = server  # the server as the child names it: dp1, GRANDCHILD/dp1
        self.base_url = base_url.rstrip("/")
        self._key = key
        self._session = session
        self._tls = tls  # None: the session's (an http:// child)
        self._query = f"server={quote(server, safe='')}"

    def _call(self, method: str, url: str) -> dict[str, Any]:
        token = site_assertion(self._key, self.child, method, url, sub=self.server)
        kwargs: dict[str, Any] = {
            "headers": {"Authorization": f"Bearer {token}", HOLDER_HEADER: "site"},
            "timeouts": CONTROL,
        }
        if self._tls is not None and url.startswith("https://"):
            kwargs["ssl"] = self._tls
        return kwargs

    def _status_of(self, body: object) -> InstallStatus:
        try:
            return InstallStatus.from_json(body)
        except UserError as exc:
            raise RemoteError(
                f"child site {self.child} answered a malformed status: {exc.message}"
            ) from exc

    async def install(
        self,
        manifest: bytes,
        signature: bytes,
        repair: bool = False,
        peers: list[dict[str, Any]] | None = None,
        peer_token: str = "",
        job: str = "",
    ) -> InstallStatus:
        """Have the child install the package on the server (peers are the child's own
        business: none are passed on; the child's own job asks its agent)."""
        body = {**InstallRequest(manifest, signature, repair).to_json(), "server": self.server}
        url = f"{self.base_url}{RELAY}/install"
        async with request(self._session, "POST", url, json=body, **self._call("POST", url)) as r:
            return self._status_of(await r.json())

    async def status(self, package_id: str, wait: float = 0.0) -> InstallStatus | None:
        return await self._install_call("GET", f"{RELAY}/installs/{package_id}", f"&wait={wait:g}")

    async def cancel(self, package_id: str) -> InstallStatus | None:
        return await self._install_call("POST", f"{RELAY}/installs/{package_id}/cancel")

    async def _install_call(self, method: str, path: str, more: str = "") -> InstallStatus | None:
        url = f"{self.base_url}{path}"
        try:
            async with request(
                self._session, method, f"{url}?{self._query}{more}", **self._call(method, url)
            ) as resp:
                return self._status_of(await resp.json())
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise

    async def remove(self, package_id: str, ref: str) -> dict[str, Any]:
        """Have the child remove ``ref`` from the server: ``{"state": "removed"}`` once it
        has, else its state there (the despooler tries again)."""
        url = f"{self.base_url}{RELAY}/remove"
        body = {**RemoveRequest(package_id, ref).to_json(), "server": self.server}
        async with request(self._session, "POST", url, json=body, **self._call("POST", url)) as r:
            data: dict[str, Any] = await r.json()
            return data
