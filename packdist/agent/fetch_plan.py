"""Which source each missing chunk of an install is asked of, and where it goes when that
source lets it down: the policy of the fetch stage, with no disk, network nor clock in it
(:mod:`packdist.agent.fetch_stage` runs it; tests drive it alone).

At the start every chunk has exactly one source (:func:`packdist.agent.sources.split_work`):
the peer that owns it, or the site. The site is the fallback: a peer that fails, is too
slow or sends wrong bytes is dropped for this transfer and everything it still owed (the
batch in flight included) goes to the site; the chunks a peer answers ``MISSING`` go to the
site, and a peer that had none of a batch is asked no more. A chunk that has landed
meanwhile (``have``: salvaged from a broken stream, say) is never queued again. The site's
queue is drained in batches bounded in chunks and bytes until it is empty and no peer is
left that could still hand work back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from packdist.agent.sources import PEER_BATCH, Peer, split_work
from packdist.core.digest import Digest

BATCH_BYTES = 32 * 1024 * 1024  # a site request asks for at most this many bytes ...
BATCH_CHUNKS = 1024  # ... and this many chunks (a single larger chunk still goes alone)


@dataclass(frozen=True)
class PeerPace:
    """When a peer counts as too slow: one request taking longer than ``slow_after``
    seconds plus its bytes at ``min_rate`` bytes/s."""

    slow_after: float
    min_rate: float

    @classmethod
    def under_limit(
        cls, slow_after: float, floor: float, download_rate: float, streams: int
    ) -> PeerPace:
        """A peer is too slow below ``floor`` or below its fair part of the agent's own
        download limit (``download_rate``, 0 for none, shared by ``streams`` streams),
        with a factor of two of slack."""
        share = download_rate / streams if streams else 0.0
        return cls(slow_after, min(floor, share or floor) / 2)

    def budget(self, nbytes: int) -> float:
        """Seconds a request for ``nbytes`` may take before its peer is dropped."""
        return self.slow_after + nbytes / self.min_rate


class FetchSchedule:
    """The fetch of one install's missing chunks: what each peer is asked next, what the
    site is asked next, and what moves to the site when a peer lets us down.

    ``have`` is read, never written: the chunks verified and written so far (the stage's
    writers add to it), so nothing that landed is asked for again.
    """

    def __init__(
        self,
        missing: Sequence[Digest],
        me: str,
        peers: Sequence[Peer],
        sizes: Mapping[Digest, int],
        have: Container[Digest],
        pace: PeerPace,
    ) -> None:
        site_first, by_peer = split_work(missing, me, peers, sizes)
        self._sizes = sizes
        self._have = have
        self.pace = pace
        self._site: deque[Digest] = deque(site_first)
        self._owed: dict[str, deque[Digest]] = {
            p.name: deque(by_peer[p.name]) for p in peers if by_peer.get(p.name)
        }
        #: the peers with a share of the work, in the order given (one task each)
        self.peers: list[Peer] = [p for p in peers if p.name in self._owed]
        self._active: set[str] = set(self._owed)  # may still hand work back to the site

    # --- peers ----------------------------------------------------------------------------

    def peer_batch(self, peer: Peer) -> list[Digest]:
        """The next chunks to ask ``peer`` for, in order; [] once it owes nothing more (it
        is then done with, like a dropped peer)."""
        work = self._owed.get(peer.name)
        if not work:
            self.peer_ended(peer)
            return []
        return [work.popleft() for _ in range(min(PEER_BATCH, len(work)))]

    def peer_budget(self, batch: Iterable[Digest]) -> float:
        """Seconds asking a peer for ``batch`` may take (see :class:`PeerPace`)."""
        return self.pace.budget(sum(self._sizes[d] for d in batch))

    def peer_answered(self, peer: Peer, got: int, lacking: Sequence[Digest]) -> None:
        """``peer`` sent ``got`` chunks of a batch and lacked ``lacking``: those go to the
        site; a peer that had none of them is asked no more (its share goes too)."""
        if not lacking:
            return
        self._to_site(lacking)
        if not got:
            self.peer_dropped(peer, ())

    def peer_dropped(self, peer: Peer, batch: Iterable[Digest]) -> None:
        """``peer`` failed, was too slow or lied while asked for ``batch``: the batch and
        all it still owed go to the site, and it is asked no more in this transfer."""
        self._to_site([*batch, *self._owed.pop(peer.name, ())])
        self.peer_ended(peer)

    def peer_ended(self, peer: Peer) -> None:
        """``peer`` will hand nothing more back (its task ended, whichever way)."""
        self._owed.pop(peer.name, None)
        self._active.discard(peer.name)

    @property
    def peers_active(self) -> int:
        """Peers that may still hand work back: until none is, the site's queue may grow."""
        return len(self._active)

    # --- the site -------------------------------------------------------------------------

    def site_batch(self) -> list[Digest]:
        """The next chunks to ask the site for: in queue order, at most ``BATCH_CHUNKS``
        and ``BATCH_BYTES`` (the first always), none that landed or twice; [] when the
        queue is empty (for now: see :attr:`peers_active`)."""
        batch: list[Digest] = []
        taken: set[Digest] = set()
        size = 0
        queue = self._site
        while queue and len(batch) < BATCH_CHUNKS:
            d = queue[0]
            if batch and size + self._sizes[d] > BATCH_BYTES:
                break
            queue.popleft()
            if d not in self._have and d not in taken:
                batch.append(d)
                taken.add(d)
                size += self._sizes[d]
        return batch

    @property
    def site_queued(self) -> list[Digest]:
        """What the site will be asked for, in order (a copy; for tests and messages)."""
        return list(self._site)

    def owed_by(self, peer: Peer) -> list[Digest]:
        """What ``peer`` will still be asked for, in order (a copy)."""
        return list(self._owed.get(peer.name, ()))

    def _to_site(self, digests: Iterable[Digest]) -> None:
        self._site.extend(d for d in digests if d not in self._have)
