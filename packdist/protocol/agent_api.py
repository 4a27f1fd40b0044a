"""The site's client of an agent: "install this signed manifest", "how far are you?",
"stop", "remove this version", "make this version active", "re-hash what you hold"."""

from __future__ import annotations

from typing import Any

import aiohttp

from packdist.auth import site_assertion
from packdist.core.signing import SigningKey
from packdist.errors import RemoteError, UserError
from packdist.http import CONTROL, HOLDER_HEADER, Timeouts, request
from packdist.protocol.messages import (
    ActivateAnswer,
    ActivateRequest,
    InstallRequest,
    InstallStatus,
    RemoveRequest,
)

#: a validation answers once every byte is re-hashed: allow it time
VALIDATE = Timeouts(connect=3.0, read=3600.0, total=3600.0)


class AgentClient:
    def __init__(
        self, server: str, base_url: str, key: SigningKey, session: aiohttp.ClientSession
    ) -> None:
        self.server = server
        self.base_url = base_url.rstrip("/")
        self._key = key
        self._session = session

    def _headers(self, method: str, url: str) -> dict[str, str]:
        """A credential for this one request: the agent checks method and path."""
        token = site_assertion(self._key, self.server, method, url)
        return {"Authorization": f"Bearer {token}", HOLDER_HEADER: f"server/{self.server}"}

    async def install(
        self,
        manifest: bytes,
        signature: bytes,
        repair: bool = False,
        peers: list[dict[str, Any]] | None = None,
        peer_token: str = "",
        job: str = "",
    ) -> InstallStatus:
        body = InstallRequest(manifest, signature, repair, peers or [], peer_token, job).to_json()
        url = f"{self.base_url}/v1/install"
        async with request(
            self._session,
            "POST",
            url,
            json=body,
            headers=self._headers("POST", url),
            timeouts=CONTROL,
        ) as resp:
            return self._status_of(await resp.json())

    def _status_of(self, body: object) -> InstallStatus:
        """The agent's answer as a status; one that is not is the agent's fault, and worth
        another attempt (an agent being upgraded, a proxy in the way)."""
        try:
            return InstallStatus.from_json(body)
        except UserError as exc:
            raise RemoteError(f"{self.server} answered a malformed status: {exc.message}") from exc

    async def remove(self, package_id: str, ref: str) -> dict[str, Any]:
        """Have the agent remove ``ref`` (NAME@VERSION, package ``package_id``); it answers
        once the version is out of ``packages/`` (absent already: success too)."""
        url = f"{self.base_url}/v1/remove"
        async with request(
            self._session,
            "POST",
            url,
            json=RemoveRequest(package_id, ref).to_json(),
            headers=self._headers("POST", url),
            timeouts=CONTROL,
        ) as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def activate(
        self, package_id: str, ref: str, check: tuple[str, ...] = (), check_timeout: float = 60.0
    ) -> ActivateAnswer:
        """Make ``ref`` (installed there) the active version of its package on the agent,
        once its health check ``check`` (if any) passed there."""
        url = f"{self.base_url}/v1/activate"
        timeouts = CONTROL
        if check:  # the agent answers once the check ended: give it the check's time
            timeouts = Timeouts(
                CONTROL.connect, CONTROL.read + check_timeout, (CONTROL.total or 0) + check_timeout
            )
        async with request(
            self._session,
            "POST",
            url,
            json=ActivateRequest(package_id, ref, check, check_timeout).to_json(),
            headers=self._headers("POST", url),
            timeouts=timeouts,
        ) as resp:
            try:
                return ActivateAnswer.from_json(await resp.json())
            except UserError as exc:
                raise RemoteError(f"{self.server} answered: {exc.message}") from exc

    async def status(self, package_id: str, wait: float = 0.0) -> InstallStatus | None:
        """The agent's view of an install; None if it does not know it (it restarted).

        With ``wait``, the agent answers as soon as the install ends, or after that long.
        """
        return await self._install_call("GET", f"/v1/installs/{package_id}?wait={wait:g}")

    async def cancel(self, package_id: str) -> InstallStatus | None:
        """Stop the agent's install of ``package_id`` (None: it had none)."""
        return await self._install_call("POST", f"/v1/installs/{package_id}/cancel")

    async def _install_call(self, method: str, path: str) -> InstallStatus | None:
        """An install's status from ``method path``; None where the agent has no such install."""
        url = f"{self.base_url}{path}"
        try:
            async with request(
                self._session, method, url, headers=self._headers(method, url), timeouts=CONTROL
            ) as resp:
                return self._status_of(await resp.json())
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise

    async def validate(self, package_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Have the agent re-hash its installed trees (``package_ids``: only those)."""
        url = f"{self.base_url}/v1/validate"
        async with request(
            self._session,
            "POST",
            url,
            json={"package_ids": package_ids or []},
            headers=self._headers("POST", url),
            timeouts=VALIDATE,
        ) as resp:
            data: dict[str, Any] = await resp.json()
            results: list[dict[str, Any]] = data.get("results", [])
            return results
