"""Where an agent gets the chunks it lacks: the site, and peers.

The site sends each install with a list of peers (see :mod:`packdist.site.tracker`):
*holders*, which have the whole package, and the *swarm*, the other servers receiving it
now. The agents split the work without talking to each other, by rendezvous hashing with
bounded loads: every chunk has one *owner* among the agent and its peers (the highest
``score(chunk, name)`` whose share of the package's bytes stays near the mean; see
:func:`owners`).

* A chunk the agent owns itself comes from a holder (the highest-scoring one) if there is
  any, else from the site.
* A chunk another peer owns comes from that peer. A receiving peer fetches the chunks it
  owns itself, so sooner or later it has them; it holds a request for a chunk it has not got
  yet for up to ``PEER_WAIT`` seconds.

Every server in a swarm computes the same owners, so the site sends each chunk about once
per location and every peer uploads about one package's worth. When a peer fails (connect
timeout, error, wrong bytes) or answers "missing", the agent drops it for this transfer and
fetches what it owned from the site: a dead peer costs a short stall, never the transfer.
Every chunk is verified against the signed manifest whatever its source.

Peer streams use the site's framing (:mod:`packdist.http`), raw chunks only, plus one more
kind of frame: ``MISSING`` (empty payload) for a chunk the peer does not have in time.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yarl

from packdist.auth import PEER_CHUNKS_PATH
from packdist.core.digest import Digest
from packdist.errors import TransferError, UserError
from packdist.http import HOLDER_HEADER, Frame, Timeouts
from packdist.http import MISSING as MISSING  # its home is packdist/http.py now
from packdist.protocol.chunk_stream import ChunkStreams, StreamStop

#: how long a peer holds a request while its own transfer of the package makes no progress
PEER_WAIT = 3.0
#: the longest a peer holds a request for any one chunk (under the requester's read timeout,
#: so a peer that waits is never mistaken for a dead one)
PEER_CHUNK_MAX = 4.0
#: chunks per peer request (raw chunks average ~150 KiB)
PEER_BATCH = 16
#: a peer sends chunks raw: none is larger than a chunking maximum (512 KiB by default)
PEER_MAX_PAYLOAD = 16 * 1024 * 1024
PEER_TIMEOUTS = Timeouts(connect=2.0, read=PEER_CHUNK_MAX + 2.0, total=None)


@dataclass(frozen=True)
class Peer:
    """A server this agent may fetch a package's chunks from, with the site's credential."""

    name: str
    url: str
    token: str
    holder: bool  # has the whole package

    @classmethod
    def parse_list(cls, data: Any, token: str = "") -> list[Peer]:
        """Peers as an install request lists them; ``token``: the credential of every entry
        that brings none of its own."""
        if data is None:
            return []
        if not isinstance(data, list):
            raise UserError("peers must be a list")
        out = []
        for item in data:
            try:
                name, url = str(item["name"]), str(item["url"])
                own = item.get("token") if isinstance(item, dict) else None
                credential = token if own is None else str(own)
                holder = bool(item.get("holder", False))
            except (KeyError, TypeError) as exc:
                raise UserError(f"malformed peer entry: {exc}") from exc
            if not url.startswith(("http://", "https://")):
                raise UserError(f"peer {name[:40]!r}: URL {url[:80]!r} is not http(s)")
            if not _usable_url(url):
                raise UserError(f"peer {name[:40]!r}: URL {url[:80]!r} is malformed")
            if not credential or any(c in credential for c in "\r\n\0"):
                raise UserError(f"peer {name[:40]!r}: malformed credential")
            out.append(cls(name, url.rstrip("/"), credential, holder))
        return out


def _usable_url(url: str) -> bool:
    """A URL with a host and a valid port that the HTTP client can use."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        return False
    try:
        parts = yarl.URL(url)
        if not parts.host or parts.port is None or not 0 < parts.port < 65536:
            return False
        parts.host.encode("idna")  # what the client does with a name: labels of <= 63
        return True
    except (ValueError, UnicodeError):  # e.g. "http://[::1", a label over 63 characters
        return False


def score(digest: Digest, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(digest.raw + name.encode(), digest_size=8).digest())


#: how far above the mean share an owner's bytes may go (consistent hashing with bounded
#: loads): plain rendezvous hashing gave one of twelve servers 1.4-1.6x the mean of a 32 MiB
#: package, and that server's upload to the eleven others was the fan-out's tail
BALANCE_SLACK = 0.05


def owners(chunks: Mapping[Digest, int], members: Iterable[str]) -> dict[Digest, str]:
    """The owner of every chunk of a package (``chunks``: each distinct chunk with its
    size): the highest-scoring member whose bytes stay within
    ``1 + BALANCE_SLACK`` times the mean share, else the least loaded. It depends only on
    the package and the set of members, so every member of a swarm computes the same."""
    names = sorted(set(members))
    cap = (1 + BALANCE_SLACK) * sum(chunks.values()) / len(names)
    load = dict.fromkeys(names, 0)
    out: dict[Digest, str] = {}
    # in the order of the digests, not the package's: the chunks that go past a full owner
    # are then scattered through the package rather than all at its end, which every
    # member fetches last (a tail owned by a few would wait on their uploads)
    for d in sorted(chunks, key=lambda c: c.raw):
        size = chunks[d]
        ranked = sorted(names, key=lambda n: score(d, n), reverse=True)
        owner = next((n for n in ranked if load[n] + size <= cap), None)
        if owner is None:  # the last chunks: whoever has least
            owner = min(ranked, key=lambda n: load[n])
        load[owner] += size
        out[d] = owner
    return out


def split_work(
    missing: Sequence[Digest],
    me: str,
    peers: Sequence[Peer],
    chunks: Mapping[Digest, int] | None = None,
) -> tuple[list[Digest], dict[str, list[Digest]]]:
    """``(from the site, {peer: from that peer})``, each in the order of ``missing``;
    ``chunks``: the package's chunks with their sizes, ``missing`` among them (owners are
    balanced over all of them, whatever each member already has; default: ``missing``, of
    equal size)."""
    site: list[Digest] = []
    by_peer: dict[str, list[Digest]] = {p.name: [] for p in peers}
    if not peers:
        return list(missing), by_peer
    owner_of = owners(chunks if chunks is not None else dict.fromkeys(missing, 1), [me, *by_peer])
    holders = [p.name for p in peers if p.holder]
    for d in missing:
        owner = owner_of[d]
        if owner == me:
            if not holders:
                site.append(d)
                continue
            owner = max(holders, key=lambda n: score(d, n))
        by_peer[owner].append(d)
    return site, by_peer


class Pulse:
    """Wakes everyone waiting for "something changed" (a chunk landed, an install began)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.waiting = 0  # read from worker threads: fire only when someone waits

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        if timeout <= 0:
            return
        self.waiting += 1
        try:  # not wait_for: on Python 3.11 it can swallow a cancellation (despooler.py)
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            pass
        finally:
            self.waiting -= 1


def peer_chunks(
    streams: ChunkStreams,
    peer: Peer,
    package_id: str,
    digests: list[Digest],
    stop: StreamStop | None = None,
    wait: float = PEER_WAIT,
) -> Iterator[Frame]:
    """The frames a peer sends for ``digests`` (raw or ``MISSING``), in the order asked;
    blocking, read in a worker thread (``streams``: made with :data:`PEER_TIMEOUTS`)."""
    url = f"{peer.url}{PEER_CHUNKS_PATH}"
    body = {"package": package_id, "digests": [d.hex for d in digests], "wait": wait}
    headers = {"Authorization": f"Bearer {peer.token}", HOLDER_HEADER: f"server/{peer.name}"}
    try:
        yield from streams.post(url, headers, body, stop, PEER_MAX_PAYLOAD)
    except ValueError as exc:  # a URL or header the client refuses (InvalidURL): no use
        raise TransferError(f"cannot ask peer {peer.name}: {exc}") from exc
