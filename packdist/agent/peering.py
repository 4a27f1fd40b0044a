"""Serving chunks to peers: ``POST /v1/peer/chunks``.

A peer asks for chunks of one package (``{"package": id, "digests": [hex, ...], "wait":
seconds}``) with a peer credential the site signed for it and for that package
(:func:`packdist.auth.peer_assertion`); over TLS it must present the certificate the site
signed for the same server (a credential lifted off one server is no good from another),
and neither is taken once the site says it removed that server. A client's credential
(``role`` client: ``packdist fetch``) is taken without a certificate. The agent answers with a chunk stream
(:mod:`packdist.http` framing): each chunk raw, in the order asked, read from the installed
tree or, while the package is still being received here, from its staging tree once the
chunk has landed and been verified. A chunk that does not land within ``wait`` seconds is
answered ``MISSING`` (see :mod:`packdist.agent.sources`) once no chunk of that package has
landed here for ``wait`` seconds, and so are chunks whose bytes no longer verify: a peer
never passes on rot.

The agent's upload limit applies to these streams (:class:`packdist.ratelimit.Bucket`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from packdist.agent.home import AgentHome
from packdist.agent.inputs import read_json, seconds
from packdist.agent.sources import MISSING, PEER_CHUNK_MAX, Pulse
from packdist.auth import CLIENT_ROLE
from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest
from packdist.errors import AuthError, UserError
from packdist.http import frame_header, holds, presented
from packdist.ratelimit import Bucket

MAX_WAIT = 30.0  # the longest a peer may ask us to hold its request
MAX_DIGESTS = 256
WRITE_TIMEOUT = 15.0  # a peer that takes none of our bytes this long is dropped


@dataclass
class ChunkView:
    """Where one package's chunks can be read on this agent."""

    root: Path  # the staging tree while receiving, the installed tree after
    places: dict[Digest, tuple[str, int, int]]  # digest -> (relative path, offset, size)
    have: set[Digest] | None = None  # while receiving: the chunks that landed; None: all

    @classmethod
    def of(cls, manifest: Manifest, root: Path, have: set[Digest] | None = None) -> ChunkView:
        places: dict[Digest, tuple[str, int, int]] = {}
        for path, offset, c in manifest.chunk_places():
            places.setdefault(c.digest, (path, offset, c.size))
        return cls(root, places, have)

    def available(self, digest: Digest) -> bool:
        return digest in self.places and (self.have is None or digest in self.have)

    def read(self, digest: Digest) -> bytes | None:
        """The chunk's bytes if they are here and verify (runs in a worker thread)."""
        path, offset, size = self.places[digest]
        try:
            with open(self.root / path, "rb", buffering=0) as f:
                data = os.pread(f.fileno(), size, offset)
        except OSError:
            return None
        return data if len(data) == size and digest.holds(data) else None


class PeerService:
    """The agent's peer endpoint. ``views(package_id)`` gives the current view of a package
    (None when the agent neither holds nor receives it); ``pulse`` fires whenever that may
    have changed."""

    def __init__(
        self,
        home: AgentHome,
        active_view: Callable[[str], ChunkView | None],
        pulse: Pulse,
        upload: Bucket,
    ) -> None:
        self.home = home
        self.active_view = active_view
        self.pulse = pulse
        self.upload = upload
        self._installed: OrderedDict[str, ChunkView] = OrderedDict()
        #: servers the site removed lately (its heartbeat answers say): a peer credential
        #: naming one is refused, though its signature still holds
        self.revoked: frozenset[str] = frozenset()

    async def view(self, package_id: str) -> ChunkView | None:
        active = self.active_view(package_id)
        if active is not None:
            return active
        cached = self._installed.get(package_id)
        if cached is not None and cached.root.is_dir():
            self._installed.move_to_end(package_id)
            return cached
        view = await asyncio.to_thread(self._installed_view, package_id)  # files, parsing
        if view is not None:
            self._installed[package_id] = view
            while len(self._installed) > 8:
                self._installed.popitem(last=False)
        return view

    def _installed_view(self, package_id: str) -> ChunkView | None:
        ref = next((r for r, pid in self.home.installed().items() if pid == package_id), None)
        manifest = self.home.manifest(package_id) if ref is not None else None
        if ref is None or manifest is None:
            return None
        return ChunkView.of(manifest, self.home.ref_dir(ref))

    async def handle(self, request: web.Request, claims: dict[str, object]) -> web.StreamResponse:
        package_id, digests, wait = _parse(await read_json(request))
        if claims.get("pkg") != package_id or not claims.get("sub"):
            raise AuthError("credential is for another package")
        # a client's (packdist fetch) comes without a certificate: it has none, and the
        # site named it a client when it signed this; a server's shows its own
        client = claims.get("role") == CLIENT_ROLE
        if not client and claims["sub"] in self.revoked:  # removed after this was signed
            raise AuthError(f"server {claims['sub']} was removed from the site")
        # over TLS a peer shows its certificate, and it is the credential's
        if (
            not client
            and request.secure
            and not holds(presented(request), f"server/{claims['sub']}")
        ):
            raise AuthError(
                f"the peer credential of {claims['sub']} came without that server's certificate"
            )
        stall = _Stall(wait)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-packdist-chunks"})
        await resp.prepare(request)
        try:
            for digest in digests:
                data = await self._chunk(package_id, digest, stall)
                if data is None:
                    frame = frame_header(digest, MISSING, 0, 0)
                else:
                    frame = frame_header(digest, Encoding.RAW, len(data), len(data)) + data
                await self.upload.take(len(frame))
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await resp.write(frame)
            await resp.write_eof()
        except (ConnectionError, TimeoutError):  # the peer went away: its loss, not ours
            if request.transport is not None:
                request.transport.abort()
        return resp

    async def _chunk(self, package_id: str, digest: Digest, stall: _Stall) -> bytes | None:
        """The chunk, once it is here: waits while the package is still arriving here, up to
        ``stall.wait`` seconds without any chunk of it landing, and at most ``PEER_CHUNK_MAX``
        for this one."""
        give_up = time.monotonic() + PEER_CHUNK_MAX
        while True:
            view = await self.view(package_id)
            if view is not None and view.available(digest):
                data = await asyncio.to_thread(view.read, digest)
                if data is not None:
                    return data
                fresh = await self.view(package_id)  # moved into place meanwhile? one more look
                if fresh is not None and fresh.root != view.root and fresh.available(digest):
                    return await asyncio.to_thread(fresh.read, digest)
                return None
            if view is not None and digest not in view.places:
                return None  # not a chunk of this package: no use waiting
            stall.observe(-1 if view is None or view.have is None else len(view.have))
            left = min(stall.left(), give_up - time.monotonic())
            if left <= 0:
                return None
            await self.pulse.wait(left)


class _Stall:
    """A deadline that moves on whenever the awaited install makes progress."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.deadline = time.monotonic() + wait
        self.seen: int | None = None  # chunks landed at the last look (-1: not started)

    def observe(self, landed: int) -> None:
        if self.seen is None or landed > self.seen:
            if self.seen is not None:
                self.deadline = time.monotonic() + self.wait
            self.seen = landed

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _parse(body: Any) -> tuple[str, list[Digest], float]:
    shape = 'body must be {"package": id, "digests": [hex, ...], "wait": seconds}'
    if not isinstance(body, dict):
        raise UserError(shape)
    package_id, listed = body.get("package"), body.get("digests")
    if not isinstance(package_id, str) or not isinstance(listed, list):
        raise UserError(shape)
    if len(listed) > MAX_DIGESTS:
        raise UserError(f"at most {MAX_DIGESTS} chunks per request")
    if not all(isinstance(x, str) for x in listed):
        raise UserError(shape)
    digests = [Digest.parse(x) for x in listed]  # UserError naming a bad one
    wait = seconds(body.get("wait", 0.0), "wait", MAX_WAIT)
    return package_id, digests, wait
