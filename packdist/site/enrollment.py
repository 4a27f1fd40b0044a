"""Certificates at enrollment: an agent sends a certificate request with its enrollment
token, and the site's authority signs it for that server at the host of the URL it was added
with (``POST /v1/agent/certificate``). The agent's key never leaves the agent; the site
decides what the certificate says. Called at enrollment and to renew, not per heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from packdist.core.names import check_host, url_host
from packdist.core.timefmt import iso
from packdist.errors import UserError
from packdist.protocol.messages import CertificateAnswer, CertificateRequest
from packdist.site.authority import SiteAuthority
from packdist.site.beats import Beats, json_body

log = logging.getLogger("packdist.site")


class CertificateDesk:
    def __init__(self, authority: SiteAuthority, beats: Beats) -> None:
        self.authority = authority
        self.beats = beats

    async def certificate(self, request: web.Request) -> web.Response:
        now = time.time()
        if self.beats.admission.overloaded(now):  # a fleet upgraded at once asks at once
            return self.beats.shed(request, now)
        server = await self.beats.agent(request, counted=True, certified=False)
        asked = CertificateRequest.from_json(await json_body(request))
        host = _host_of(server.url)
        issued = await asyncio.to_thread(
            self.authority.issue, asked.request.encode(), server.name, [host], time.time()
        )
        log.info(
            "certificate for %s at %s (serial %x, until %s)",
            server.name,
            host,
            issued.serial,
            iso(issued.not_after),
        )
        answer = CertificateAnswer(
            issued.pem.decode(), self.authority.pem.decode(), issued.not_after
        )
        return web.json_response(answer.to_json())


def _host_of(url: str) -> str:
    """The host of a server's URL as a certificate names it (a UserError, so a 400, for a
    URL that has none a certificate can name: such a server cannot be given one)."""
    try:
        host = url_host(url)
    except ValueError:
        host = None
    if not host:
        raise UserError(f"the server's URL {url!r} has no host a certificate can name")
    return check_host(host)
