"""Agents refused for a wrong or revoked enrollment token, told to the operator: the site
keeps the latest refusal of each server the agent can be taken for (the name it says it
was enrolled as, else the server whose URL is its address and the port it serves on), so
that ``server list``, ``job show`` and the dashboard's events say "dp1: an agent tried to
enroll with a wrong token at 06:07" rather than leave the server merely offline.

At most one write per caller every ``RECORD_EVERY`` seconds: an agent retrying, or a
flood of wrong tokens, costs the store almost nothing.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from aiohttp import web

from packdist.http import CLAIM_HEADER, PORT_HEADER
from packdist.service import Service
from packdist.site.store_runner import StoreRunner

log = logging.getLogger("packdist.site")

RECORD_EVERY = 10.0  # seconds between two records of refusals from one address
SITE_BUDGET = 0.5  # seconds between two records of refusals, whoever sends them
MAX_CALLERS = 10_000  # addresses remembered (the oldest forgotten first)


class Refusals:
    """Who sends a wrong token is not known (that is what a token would say), and the name
    it claims is its own word: the limits are by address, whatever it claims, and for the
    whole site, so a flood of wrong tokens costs the store at most two writes a second,
    and the words name the address it came from."""

    def __init__(self, db: StoreRunner) -> None:
        self.db = db
        self._last: OrderedDict[str, float] = OrderedDict()
        self._last_any = 0.0

    async def refused(self, request: web.Request) -> None:
        """``request`` carried a token of no server: kept for the server it is taken for."""
        claim = request.headers.get(CLAIM_HEADER, "")[:64]
        port_text = request.headers.get(PORT_HEADER, "")[:5]
        remote = request.remote or "?"
        now = time.time()
        if now - self._last.get(remote, 0.0) < RECORD_EVERY or now - self._last_any < SITE_BUDGET:
            return
        self._last[remote] = self._last_any = now
        self._last.move_to_end(remote)
        while len(self._last) > MAX_CALLERS:
            self._last.popitem(last=False)
        port = int(port_text) if port_text.isdigit() else None
        try:
            server = await self.db(lambda s: Service(s).record_refused(claim, remote, port, now))
        except Exception as exc:  # a diagnosis only: the refusal stands whatever happens
            log.warning("recording a refused agent failed: %s", exc)
            return
        if server is not None:
            log.warning(
                "an agent at %s taken for %s was refused: wrong or revoked enrollment token",
                remote,
                server,
            )
