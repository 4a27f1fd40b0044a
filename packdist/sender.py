"""The sender: how the despooler reaches the target of an instruction. A server of this
site is reached at its agent (:class:`~packdist.protocol.agent_api.AgentClient`); a server
behind a child site (named ``CHILD/SERVER``) through that child
(:class:`~packdist.protocol.child_api.ChildClient`), which fetches the package once and
installs it on its servers itself. Both answer the same calls, so the despooler's attempt,
its lease, its retries and its failure kinds are the same for either.
"""

from __future__ import annotations

import ssl
import time

import aiohttp

from packdist.core import tls
from packdist.core.schedule import Schedule
from packdist.core.signing import SigningKey
from packdist.errors import Busy, ConnectError, ErrorKind, RemoteError
from packdist.protocol.agent_api import AgentClient
from packdist.protocol.child_api import ChildClient
from packdist.service.activation import DEFAULT_HEALTH_TIMEOUT, HEALTH_CHECK, HEALTH_TIMEOUT
from packdist.site.store_runner import StoreRunner
from packdist.store.records import ChildSiteRecord, Claim

TargetClient = AgentClient | ChildClient


class WindowClosed(Busy):
    """The link to a child is outside its windows: nothing is sent until ``opens_at``."""

    def __init__(self, message: str, opens_at: float | None) -> None:
        super().__init__(message)
        self.opens_at = opens_at


def behind_child(server: str) -> tuple[str, str] | None:
    """``(child, server as the child names it)`` for a server behind a child site; None for
    one of this site's own (whose names never hold a ``/``)."""
    child, slash, rest = server.partition("/")
    return (child, rest) if slash else None


class Sender:
    def __init__(self, db: StoreRunner, key: SigningKey, session: aiohttp.ClientSession) -> None:
        self.db, self.key, self.session = db, key, session
        self._tls: dict[str, tuple[str, ssl.SSLContext]] = {}  # child: (its CA, a context)

    async def client(self, c: Claim, transfer: bool = True) -> TargetClient:
        """The client for the claim's target; ``transfer``: the call sends a package (a
        child's windows apply: WindowClosed outside them), not a cancel or a removal."""
        found = behind_child(c.server)
        if found is None:
            return AgentClient(c.server, c.server_url, self.key, self.session)
        child, server = found
        record = await self.db(lambda s: s.child_site(child))
        if record is None:
            raise ConnectError(f"child site {child} is not registered here")
        schedule, now = Schedule.from_json(record.windows), time.time()
        if transfer and (words := schedule.closed_words(now)):
            raise WindowClosed(f"at {child}: {words}", schedule.next_open(now))
        context = self._child_tls(record) if c.server_url.startswith("https://") else None
        return ChildClient(child, server, c.server_url, self.key, self.session, context)

    def _child_tls(self, record: ChildSiteRecord) -> ssl.SSLContext:
        """A client context trusting the child's own authority, as it last reported it."""
        name = record.name
        if not record.ca:
            raise ConnectError(f"child site {name} has not reported its authority yet")
        kept = self._tls.get(name)
        if kept is not None and kept[0] == record.ca:
            return kept[1]
        context = tls.client_context(None)
        try:
            context.load_verify_locations(cadata=record.ca)
        except ssl.SSLError as exc:
            raise ConnectError(f"child site {name} reported an unusable authority: {exc}") from exc
        self._tls[name] = (record.ca, context)
        return context


async def activate(client: TargetClient, c: Claim) -> None:
    """Make the claim's version, installed there, the active one on its server."""
    if not isinstance(client, AgentClient):  # the service refuses such jobs; older ones
        raise RemoteError(
            f"activation behind a child site is not supported yet ({c.server})",
            kind=ErrorKind.REFUSED,
        )
    check = c.options.get(HEALTH_CHECK) or ()
    timeout = float(c.options.get(HEALTH_TIMEOUT, DEFAULT_HEALTH_TIMEOUT))
    answer = await client.activate(c.package_id, c.package_ref, tuple(check), timeout)
    if answer.package != c.package_ref:
        raise RemoteError(f"{c.server} activated {answer.package}, not {c.package_ref}")
    if check and not answer.checked:  # an agent too old to know of health checks
        raise RemoteError(
            f"{c.server} switched to {c.package_ref} without running its health check"
            " (its agent is too old for health checks: upgrade it)",
            kind=ErrorKind.REFUSED,
        )
