"""The agent's client of the site API: enrollment, heartbeats, chunk fetches."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.http import HEARTBEAT, STREAM, Frame, read_frames, request


class SiteClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        session: aiohttp.ClientSession,
        liveness: aiohttp.ClientSession,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"}
        self._session = session
        self._liveness = liveness  # fresh connection per call: hello and heartbeats

    async def hello(self) -> dict[str, Any]:
        """Enroll: learn our server name and the site's public key."""
        url = f"{self.base_url}/v1/agent/hello"
        async with request(
            self._liveness, "POST", url, headers=self._auth, timeouts=HEARTBEAT
        ) as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def heartbeat(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/v1/agent/heartbeat"
        async with request(
            self._liveness, "POST", url, headers=self._auth, json=payload, timeouts=HEARTBEAT
        ) as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def chunks(
        self, digests: list[Digest], bases: dict[Digest, list[Digest]] | None = None
    ) -> AsyncGenerator[Frame, None]:
        """Stream the requested chunks as frames (not decoded nor verified: the caller
        decodes each, against the ``bases`` it offered, and checks every digest).

        An async generator: close it (``contextlib.aclosing``) when stopping early, so the
        connection is released at once rather than whenever the generator is collected.
        """
        url = f"{self.base_url}/v1/chunks"
        body: dict[str, Any] = {
            "digests": [d.hex for d in digests],
            "accept": [e.label for e in Encoding],
        }
        if bases:
            body["bases"] = {d.hex: [b.hex for b in bs] for d, bs in bases.items()}
        async with request(
            self._session, "POST", url, headers=self._auth, json=body, timeouts=STREAM
        ) as resp:
            async for frame in read_frames(resp.content, url):
                yield frame
