"""A child site's client of its parent: the parent's authority, then reports."""

from __future__ import annotations

import aiohttp

from packdist.http import HEARTBEAT, HOLDER_HEADER, request
from packdist.protocol.hierarchy import REPORT_PATH, ChildReport, ReportAnswer

MAX_AUTHORITY = 16 * 1024  # bytes of the parent's authority PEM, at most (under 1 KiB)


class ParentClient:
    """A child site's client of its parent: the parent's authority (to pin before anything
    else is sent), and reports. Every call names the expected holder of the parent's TLS
    certificate (a site's), so a parent URL answered by an agent's certificate is refused."""

    def __init__(self, url: str, token: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}", HOLDER_HEADER: "site"}
        self._session = session

    async def authority(self, discovery: aiohttp.ClientSession) -> bytes:
        """The parent's certificate authority (PEM), fetched without verifying the parent
        and without the token: the caller checks it against the token's fingerprint."""
        async with request(
            discovery,
            "GET",
            f"{self.url}/v1/site/authority",
            timeouts=HEARTBEAT,
            ssl=False,  # nothing is trusted yet: the fingerprint check is the proof
            allow_redirects=False,
        ) as resp:
            return await resp.content.read(MAX_AUTHORITY + 1)

    async def report(self, report: ChildReport) -> ReportAnswer:
        async with request(
            self._session,
            "POST",
            f"{self.url}{REPORT_PATH}",
            headers=self._auth,
            json=report.to_json(),
            timeouts=HEARTBEAT,
        ) as resp:
            return ReportAnswer.from_json(await resp.json())
