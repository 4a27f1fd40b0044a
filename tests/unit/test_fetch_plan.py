"""The fetch stage's source policy alone (agent/fetch_plan.py): which chunk each peer and
the site is asked for, and where a chunk goes when its peer lets us down. No disk, no
network, no clock: the sources are played by the test."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from packdist.agent.fetch_plan import BATCH_BYTES, BATCH_CHUNKS, FetchSchedule, PeerPace
from packdist.agent.sources import PEER_BATCH, Peer
from packdist.core.digest import Digest
from tests.fuzzing import fuzz, tried

PACE = PeerPace(slow_after=10.0, min_rate=1_000_000.0)


def digests(n: int, seed: int = 0) -> list[Digest]:
    return [Digest.of(f"{seed}:{i}".encode()) for i in range(n)]


def peer(name: str, holder: bool = False) -> Peer:
    return Peer(name, f"http://{name}:8701", "token", holder)


def schedule(
    missing: list[Digest],
    peers: list[Peer],
    have: set[Digest] | None = None,
    size: int = 1000,
    sizes: dict[Digest, int] | None = None,
) -> FetchSchedule:
    sizes = sizes or dict.fromkeys(missing, size)
    return FetchSchedule(missing, "dp1", peers, sizes, have if have is not None else set(), PACE)


def drain_site(s: FetchSchedule) -> list[Digest]:
    out: list[Digest] = []
    while batch := s.site_batch():
        out += batch
    return out


# --- the start ----------------------------------------------------------------------------


def test_without_peers_the_site_is_asked_for_everything_in_order() -> None:
    missing = digests(50)
    s = schedule(missing, [])
    assert s.peers == [] and s.peers_active == 0
    assert drain_site(s) == missing


def test_with_a_holder_about_the_site_is_asked_for_nothing_at_first() -> None:
    missing = digests(40)
    holder = peer("dp2", holder=True)
    s = schedule(missing, [holder])
    assert s.site_batch() == []
    assert s.owed_by(holder) == missing
    assert s.peers_active == 1, "the site waits: the holder may hand work back"


def test_a_peer_with_no_share_is_not_asked_at_all() -> None:
    s = schedule([], [peer("dp2", holder=True)])
    assert s.peers == [] and s.peers_active == 0


@fuzz(100)
@given(
    st.integers(0, 150),
    st.lists(st.booleans(), max_size=8),
)
def test_every_missing_chunk_starts_with_exactly_one_source(n: int, holders: list[bool]) -> None:
    tried("fetch schedule: one source per chunk at the start")
    missing = digests(n, seed=len(holders))
    peers = [peer(f"dp{i + 2}", holder=h) for i, h in enumerate(holders)]
    s = schedule(missing, peers)
    sources = Counter(s.site_queued)
    for p in s.peers:
        sources.update(s.owed_by(p))
    assert sources == Counter(missing), "every chunk once, none invented"


# --- peers letting us down ----------------------------------------------------------------


def test_a_failed_peers_share_goes_to_the_site_and_it_is_asked_no_more() -> None:
    missing = digests(3 * PEER_BATCH)
    dp2 = peer("dp2", holder=True)
    s = schedule(missing, [dp2])
    batch = s.peer_batch(dp2)
    assert batch == missing[:PEER_BATCH]
    s.peer_dropped(dp2, batch)
    assert s.peer_batch(dp2) == [], "a dropped peer is asked no more"
    assert s.peers_active == 0
    assert drain_site(s) == missing, "the batch in flight and the rest, each once, in order"


def test_chunks_a_peer_lacks_go_to_the_site_and_it_keeps_its_share_if_it_had_some() -> None:
    missing = digests(2 * PEER_BATCH)
    dp2 = peer("dp2", holder=True)
    s = schedule(missing, [dp2])
    batch = s.peer_batch(dp2)
    s.peer_answered(dp2, got=len(batch) - 2, lacking=batch[:2])
    assert s.site_batch() == batch[:2]
    assert s.peer_batch(dp2) == missing[PEER_BATCH:], "it had some: asked for the next"


def test_a_peer_with_none_of_a_batch_is_asked_no_more_and_its_share_goes_to_the_site() -> None:
    missing = digests(2 * PEER_BATCH)
    dp2 = peer("dp2", holder=True)
    s = schedule(missing, [dp2])
    batch = s.peer_batch(dp2)
    s.peer_answered(dp2, got=0, lacking=batch)
    assert s.peer_batch(dp2) == []
    assert s.peers_active == 0
    assert drain_site(s) == missing


def test_a_peer_that_had_everything_hands_nothing_to_the_site() -> None:
    missing = digests(PEER_BATCH + 1)
    dp2 = peer("dp2", holder=True)
    s = schedule(missing, [dp2])
    while batch := s.peer_batch(dp2):
        s.peer_answered(dp2, got=len(batch), lacking=[])
    assert s.peers_active == 0
    assert s.site_batch() == []


def test_what_landed_meanwhile_is_not_asked_of_the_site_again() -> None:
    missing = digests(PEER_BATCH)
    dp2 = peer("dp2", holder=True)
    have: set[Digest] = set()
    s = schedule(missing, [dp2], have=have)
    batch = s.peer_batch(dp2)
    have.update(batch[:5])  # salvaged from the peer's stream before it broke
    s.peer_dropped(dp2, batch)
    assert s.site_queued == batch[5:], "not even queued"
    assert drain_site(s) == batch[5:]


def test_the_site_waits_while_any_peer_may_still_hand_work_back() -> None:
    missing = digests(PEER_BATCH)
    dp2, dp3 = peer("dp2", holder=True), peer("dp3", holder=True)
    s = schedule(missing, [dp2, dp3])
    assert s.peers_active == 2
    while s.peer_batch(dp2):
        pass  # dp2 did its share
    assert s.peers_active == 1
    s.peer_ended(dp3)  # its task ended some other way (cancelled, disk full)
    assert s.peers_active == 0


# --- the site's batches -------------------------------------------------------------------


def test_a_site_batch_is_bounded_in_chunks() -> None:
    missing = digests(BATCH_CHUNKS + 10)
    s = schedule(missing, [], size=1)
    assert [len(b) for b in iter(s.site_batch, [])] == [BATCH_CHUNKS, 10]


def test_a_site_batch_is_bounded_in_bytes_and_a_chunk_larger_than_that_goes_alone() -> None:
    big, a, b, c = digests(4)
    sizes = {big: BATCH_BYTES + 1, a: BATCH_BYTES // 2, b: BATCH_BYTES // 2, c: 1}
    s = schedule([big, a, b, c], [], sizes=sizes)
    assert s.site_batch() == [big]
    assert s.site_batch() == [a, b]
    assert s.site_batch() == [c]
    assert s.site_batch() == []


def test_a_site_batch_never_asks_for_a_chunk_twice() -> None:
    missing = digests(4)
    dp2 = peer("dp2", holder=True)
    s = schedule(missing, [dp2])
    batch = s.peer_batch(dp2)
    s.peer_answered(dp2, got=2, lacking=batch[:2])
    s.peer_dropped(dp2, batch[:2])  # the same chunks handed back twice over
    assert sorted(drain_site(s)) == sorted(batch[:2])


# --- the pace ------------------------------------------------------------------------------


def test_a_peer_is_given_half_its_fair_part_of_the_download_limit() -> None:
    unlimited = PeerPace.under_limit(10.0, 1_000_000.0, download_rate=0.0, streams=4)
    assert unlimited.min_rate == 500_000.0
    assert unlimited.budget(1_000_000) == 12.0
    limited = PeerPace.under_limit(10.0, 1_000_000.0, download_rate=800_000.0, streams=4)
    assert limited.min_rate == 100_000.0, "200 kB/s each over four streams, halved"
    s = FetchSchedule([], "dp1", [], {Digest.of(b"x"): 50_000}, set(), limited)
    assert s.peer_budget([Digest.of(b"x")]) == 10.5


# --- any sequence of answers ----------------------------------------------------------------

ANSWER = st.sampled_from(["all", "some", "none", "fails", "slow"])


@fuzz(150)
@given(
    st.integers(0, 120),
    st.lists(st.booleans(), min_size=0, max_size=5),
    st.lists(ANSWER, min_size=1, max_size=40),
    st.randoms(use_true_random=False),
)
def test_whatever_peers_answer_every_chunk_lands_once_and_the_site_never_repeats(
    n: int, holders: list[bool], answers: list[str], rnd: random.Random
) -> None:
    """Peers answer a batch with all of it, part of it, none of it, or fail (slow or
    broken) after sending a prefix; the site sends whatever it is asked. Every chunk ends up
    here, the site is never asked for a chunk twice nor for one that landed, and a peer
    dropped or done with is asked no more."""
    tried("fetch schedule: any sequence of peer answers")
    missing = digests(n, seed=len(holders))
    peers = [peer(f"dp{i + 2}", holder=h) for i, h in enumerate(holders)]
    have: set[Digest] = set()
    s = schedule(missing, peers, have=have)
    from_site: Counter[Digest] = Counter()
    asked_of_peers: Counter[Digest] = Counter()
    done: set[str] = set()
    step = 0
    while True:
        progressed = False
        for p in s.peers:
            if p.name in done:
                assert s.peer_batch(p) == [], f"{p.name} asked again after it was done with"
                continue
            batch = s.peer_batch(p)
            if not batch:
                done.add(p.name)
                continue
            progressed = True
            asked_of_peers.update(batch)
            answer = answers[step % len(answers)]
            step += 1
            if answer in ("fails", "slow"):
                have.update(batch[: rnd.randrange(len(batch) + 1)])  # what arrived whole
                s.peer_dropped(p, batch)
                done.add(p.name)
                continue
            lacking = [] if answer == "all" else batch if answer == "none" else batch[1::2]
            got = [d for d in batch if d not in lacking]
            have.update(got)
            s.peer_answered(p, len(got), lacking)
            if lacking and not got:
                done.add(p.name)
        site = s.site_batch()
        for d in site:
            assert d not in have, "the site asked for a chunk that had landed"
        from_site.update(site)
        have.update(site)
        if not progressed and not site and s.peers_active == 0:
            break
    assert set(missing) <= have, "a chunk was left behind"
    assert all(c == 1 for c in from_site.values()), "the site was asked for a chunk twice"
    assert all(c == 1 for c in asked_of_peers.values()), "a chunk was asked of two peers"
    assert s.peers_active == 0
