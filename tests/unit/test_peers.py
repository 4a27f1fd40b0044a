"""Peer fan-out, the parts without a network: who owns which chunk, which peers the tracker
offers, their credentials, and bandwidth limits."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packdist.agent.home import AgentHome
from packdist.agent.installer import Install, Installer, InstallState
from packdist.agent.signers import TrustedSigners
from packdist.agent.sources import BALANCE_SLACK, MISSING, Peer, owners, split_work
from packdist.auth import (
    ANY_PEER,
    PEER_CHUNKS_PATH,
    PEER_TTL,
    check_site_assertion,
    peer_assertion,
)
from packdist.core.digest import Digest
from packdist.core.signing import SigningKey
from packdist.errors import AuthError, TransferError, UserError
from packdist.http import Frame
from packdist.protocol.chunk_stream import StreamStop
from packdist.ratelimit import Bucket, parse_rate
from packdist.site.tracker import (
    ALIVE_WITHIN,
    MAX_HOLDERS,
    MAX_SWARM,
    Swarm,
    SwarmIndex,
    choose_peers,
)
from packdist.store.base import SwarmMember
from tests.unit.test_agent_home import KEY as AGENT_KEY
from tests.unit.test_agent_home import PIECE, Package, raw_frame, serve, tree_of, v

KEY = SigningKey.generate()
NOW = 1_700_000_000.0
PKG = "ab" * 32


def digests(n: int, seed: int = 0) -> list[Digest]:
    return [Digest.of(f"{seed}:{i}".encode()) for i in range(n)]


def peer(name: str, holder: bool = False) -> Peer:
    return Peer(name, f"http://{name}:8701", "token", holder)


# --- split_work ---------------------------------------------------------------------------

names = st.lists(
    st.text("abcdefgh0123456789", min_size=1, max_size=6), min_size=1, max_size=12, unique=True
)


@settings(deadline=None)
@given(names, st.integers(0, 200), st.integers(0, 3))
def test_every_chunk_has_exactly_one_source(members: list[str], n: int, holders: int) -> None:
    me, others = members[0], members[1:]
    peers = [peer(x, holder=i < holders) for i, x in enumerate(others)]
    missing = digests(n)
    site, by_peer = split_work(missing, me, peers)
    assigned = site + [d for ds in by_peer.values() for d in ds]
    assert sorted(assigned, key=lambda d: d.raw) == sorted(missing, key=lambda d: d.raw)
    if any(p.holder for p in peers):
        assert site == [], "with a holder about, the site is not needed"
    if not peers:
        assert site == missing


@settings(deadline=None, max_examples=30)
@given(names.filter(lambda m: len(m) >= 2))
def test_receivers_agree_on_owners(members: list[str]) -> None:
    """Every member of a swarm computes the same owner for each chunk, so each one fetches
    its own share from the site and the others' shares from them."""
    missing = digests(300, seed=len(members))
    package = {d: 1000 + i % 7 * 100 for i, d in enumerate(missing)}  # the manifest's chunks
    fetched_from_site: list[Digest] = []
    for me in members:
        site, by_peer = split_work(missing, me, [peer(x) for x in members if x != me], package)
        fetched_from_site += site
        for owner, ds in by_peer.items():  # the owner lacks only its share, say
            others = [peer(x) for x in members if x != owner]
            owner_site, _ = split_work(ds, owner, others, package)
            assert owner_site == ds, f"{owner} does not fetch what {me} expects it to own"
    # Each chunk leaves the site once.
    assert sorted(fetched_from_site, key=lambda d: d.raw) == sorted(missing, key=lambda d: d.raw)


def test_work_spreads_over_the_swarm() -> None:
    members = [f"dp{i}" for i in range(1, 13)]
    site, by_peer = split_work(digests(1200), "dp1", [peer(x) for x in members[1:]])
    shares = [len(site), *(len(v) for v in by_peer.values())]
    assert min(shares) > 50 and max(shares) < 150, shares  # ~100 each


def test_owners_carry_about_equal_bytes_whatever_the_hash_gives_each() -> None:
    members = [f"dp{i}" for i in range(1, 13)]
    rnd = random.Random(7)
    package = {d: rnd.randint(64 * 1024, 300 * 1024) for d in digests(220)}  # 32 MiB or so
    load: Counter[str] = Counter()
    for d, owner in owners(package, reversed(members)).items():  # any order of members
        load[owner] += package[d]
    mean = sum(package.values()) / len(members)
    assert max(load.values()) <= (1 + BALANCE_SLACK) * mean + 300 * 1024, load
    assert owners(package, members) == owners(package, reversed(members))


def test_peer_list_is_validated() -> None:
    assert Peer.parse_list(None) == []
    parsed = Peer.parse_list([{"name": "dp2", "url": "http://x:1/", "token": "t", "holder": 1}])
    assert parsed == [Peer("dp2", "http://x:1", "t", True)]
    with pytest.raises(UserError, match="not http"):
        Peer.parse_list([{"name": "dp2", "url": "file:///etc", "token": "t"}])
    with pytest.raises(UserError, match="malformed peer"):
        Peer.parse_list([{"name": "dp2"}])


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://", "http://a b", "http://x:99999", "http://" + "a" * 300,
            "http://x:1\n", "http://x:0"],
)  # fmt: skip
def test_a_peer_url_the_client_cannot_use_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(UserError, match="malformed") as caught:
        Peer.parse_list([{"name": "dp2", "url": url, "token": "t"}])
    assert "\n" not in caught.value.message and len(caught.value.message) < 200
    with pytest.raises(UserError, match="malformed credential"):
        Peer.parse_list([{"name": "dp2", "url": "http://x:1", "token": "t\r\nX-Evil: 1"}])


def test_one_credential_in_an_install_request_serves_every_peer_that_brings_none() -> None:
    entries = [{"name": "dp2", "url": "http://x:1"}, {"name": "dp3", "url": "http://y:1/"}]
    entries.append({"name": "dp4", "url": "http://z:1", "token": "own", "holder": True})
    peers = Peer.parse_list(entries, "shared")
    assert [(p.name, p.url, p.token, p.holder) for p in peers] == [
        ("dp2", "http://x:1", "shared", False),
        ("dp3", "http://y:1", "shared", False),
        ("dp4", "http://z:1", "own", True),
    ]
    with pytest.raises(UserError, match=r"dp2.*malformed credential"):
        Peer.parse_list(entries[:1])  # no credential anywhere


def test_asking_a_peer_whose_url_the_client_refuses_is_a_transfer_error() -> None:
    from packdist.agent.sources import peer_chunks
    from packdist.core.tls import client_context
    from packdist.protocol.chunk_stream import ChunkStreams

    peer = Peer("dp2", "http://[::1", "t", True)  # past the list's checks somehow
    with pytest.raises(TransferError, match="cannot ask peer dp2"):
        list(peer_chunks(ChunkStreams(client_context(None)), peer, "ab" * 32, [Digest.of(b"x")]))


# --- the tracker --------------------------------------------------------------------------


def member(name: str, holder: bool = False, seen: float | None = NOW, **labels: str) -> SwarmMember:
    return SwarmMember(name, f"http://{name}:8701", tuple(sorted(labels.items())), seen, holder)


def test_tracker_offers_live_peers_of_the_same_location_with_credentials() -> None:
    members = [
        member("dp1", site="berlin"),
        member("dp2", site="berlin"),
        member("dp3", holder=True, site="berlin"),
        member("dp4", site="paris"),  # elsewhere
        member("dp5", site="berlin", seen=NOW - ALIVE_WITHIN - 1),  # silent
        member("dp6", site="berlin", seen=None),  # never heard from
    ]
    offers = choose_peers(members, "dp1", PKG, KEY, NOW)
    assert [(o.name, o.holder) for o in offers] == [("dp2", False), ("dp3", True)]
    assert len({o.token for o in offers}) == 1  # one signature per install, not per peer
    for o in offers:
        claims = check_site_assertion(
            o.token, KEY.public, (o.name, ANY_PEER), "POST", PEER_CHUNKS_PATH, NOW + PEER_TTL - 1
        )
        assert (claims["sub"], claims["pkg"]) == ("dp1", PKG)


def test_tracker_caps_holders_but_not_the_swarm() -> None:
    members = [member("me")] + [member(f"h{i}", holder=True) for i in range(20)]
    members += [member(f"r{i}") for i in range(20)]
    offers = choose_peers(members, "me", PKG, KEY, NOW)
    assert sum(o.holder for o in offers) == MAX_HOLDERS
    assert sum(not o.holder for o in offers) == 20


def test_peer_credential_is_for_one_package_on_the_peer_route_only() -> None:
    token = peer_assertion(KEY, "dp1", PKG, now=NOW)
    peers = ("dp2", ANY_PEER)  # what an agent accepts on its peer route
    # where a credential must name the agent itself (every other route), it is refused
    with pytest.raises(AuthError, match="another server"):
        check_site_assertion(token, KEY.public, "dp2", "POST", PEER_CHUNKS_PATH, now=NOW)
    with pytest.raises(AuthError, match="another path"):
        check_site_assertion(token, KEY.public, peers, "POST", "/v1/install", now=NOW)
    with pytest.raises(AuthError, match="expired"):
        check_site_assertion(token, KEY.public, peers, "POST", PEER_CHUNKS_PATH, NOW + PEER_TTL + 1)
    claims = check_site_assertion(token, KEY.public, peers, "POST", PEER_CHUNKS_PATH, now=NOW)
    assert (claims["sub"], claims["pkg"]) == ("dp1", PKG)


def test_choosing_peers_costs_the_same_in_a_swarm_of_twenty_thousand() -> None:
    members = [member(f"h{i:05d}", holder=True) for i in range(10_000)]
    members += [member(f"r{i:05d}") for i in range(10_000)]
    swarm = Swarm(members, NOW)
    started = time.process_time()
    for i in range(1_000):
        offers = swarm.offers(f"r{i:05d}", PKG, KEY, NOW)
        assert sum(o.holder for o in offers) == MAX_HOLDERS
        assert sum(not o.holder for o in offers) == MAX_SWARM
    # a loose bound: reading the whole swarm or signing per peer costs 10-100x this
    assert time.process_time() - started < 3.0


def test_a_swarm_read_serves_installs_for_a_while_then_is_read_again() -> None:
    index = SwarmIndex(refresh=2.0)
    assert index.fresh(PKG, "dp1", NOW) is None
    swarm = index.load(PKG, [member("dp1"), member("dp2"), member("dp3", holder=True)], NOW)
    assert index.fresh(PKG, "dp1", NOW + 1.9) is swarm
    assert index.fresh(PKG, "dp1", NOW + 2.1) is None
    assert index.fresh(PKG, "dp1", NOW - 1) is None  # the clock went back: read again
    assert index.fresh(PKG, "dp9", NOW + 1) is None  # a receiver it never heard of: read again
    # ... but not over and over: just read, it serves, and offers such a server nothing
    assert index.fresh(PKG, "dp9", NOW + 0.2) is swarm
    assert swarm.offers("dp9", PKG, KEY, NOW + 0.2) == []
    # a receiver that installed is offered as a holder from then on, without a read
    index.installed(PKG, "dp2")
    offers = swarm.offers("dp1", PKG, KEY, NOW + 1)
    assert [(o.name, o.holder) for o in offers] == [("dp2", True), ("dp3", True)]


# --- bandwidth limits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("0", 0.0),
        ("100mbit", 12_500_000.0),
        ("12.5MB", 12_500_000.0),
        ("2MiB/s", 2 * 1024 * 1024.0),
        ("1000", 1000.0),
        (500, 500.0),
    ],
)
def test_rates_parse(text: str | int, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "10 parsecs", "-5", "1e9x"])
def test_bad_rates_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(UserError, match="100mbit"):
        parse_rate(text)


def test_a_bucket_holds_the_average_rate() -> None:
    """Sending 5x the burst through a 1 MB/s bucket takes about the time the rate implies."""
    rate = 1_000_000.0
    bucket = Bucket(rate)

    async def send() -> float:
        started = time.monotonic()
        for _ in range(50):
            await bucket.take(25_000)  # 1.25 MB in all
        return time.monotonic() - started

    took = asyncio.run(send())
    # 1.25 MB at 1 MB/s, less the first burst (0.25 s worth): at least ~1 s.
    assert took >= 0.9, took


def test_an_unlimited_bucket_never_waits() -> None:
    bucket = Bucket(0)
    assert not bucket.limited
    asyncio.run(bucket.take(10**12))


# --- the installer with peers that lie or lack ----------------------------------------------


def _install_with_peer(
    tmp_path: Path, peer_fetch: Any, pkg: Package | None = None
) -> tuple[Install, list[int], Package]:
    home = AgentHome(tmp_path / "agent")
    home.prepare()
    pkg = pkg or v(3)
    calls: list[int] = []
    installer = Installer(home, serve(pkg, calls=calls), peer_fetch=peer_fetch)

    async def main() -> Install:
        inst = await installer.start(
            pkg.manifest.canonical(),
            pkg.signed.signature,
            TrustedSigners(AGENT_KEY.public),
            peers=[Peer("evil", "http://evil:8701", "token", holder=True)],
            me="dp1",
        )
        await inst.finished.wait()
        return inst

    inst = asyncio.run(main())
    assert tree_of(home.package_dir("app", "1")) == pkg.files, inst.error
    return inst, calls, pkg


def test_a_peer_that_sends_wrong_bytes_is_dropped_and_the_site_fills_in(tmp_path: Path) -> None:
    asked: list[int] = []

    def liar(p: Peer, package_id: str, ds: list[Digest], stop: StreamStop) -> Iterator[Frame]:
        asked.append(len(ds))
        for d in ds:
            yield raw_frame(d, b"\0" * PIECE)

    inst, calls, pkg = _install_with_peer(tmp_path, liar)
    assert inst.state is InstallState.INSTALLED
    assert len(asked) == 1, "a peer caught lying is asked no more"
    assert sum(calls) == len(pkg.chunks), "the site sent every chunk"


def test_a_peer_that_lacks_the_chunks_is_asked_once(tmp_path: Path) -> None:
    asked: list[int] = []

    def empty(p: Peer, package_id: str, ds: list[Digest], stop: StreamStop) -> Iterator[Frame]:
        asked.append(len(ds))
        for d in ds:
            yield Frame(d, MISSING, 0, b"")

    inst, calls, pkg = _install_with_peer(tmp_path, empty)
    assert inst.state is InstallState.INSTALLED and inst.bytes_from_peers == 0
    assert len(asked) == 1
    assert sum(calls) == len(pkg.chunks)


def test_an_honest_peer_supplies_everything(tmp_path: Path) -> None:
    pkg = v(3)

    def honest(p: Peer, package_id: str, ds: list[Digest], stop: StreamStop) -> Iterator[Frame]:
        for d in ds:
            yield raw_frame(d, pkg.chunks[d])

    inst, calls, _ = _install_with_peer(tmp_path, honest, pkg)
    assert calls == [], "nothing from the site"
    assert inst.bytes_from_peers > 0


def test_a_peer_too_slow_is_dropped_and_the_site_fills_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import packdist.agent.fetch_stage as installer_module

    monkeypatch.setattr(installer_module, "PEER_SLOW_AFTER", 0.5)
    pkg = v(3)
    asked: list[int] = []

    def trickle(p: Peer, package_id: str, ds: list[Digest], stop: StreamStop) -> Iterator[Frame]:
        asked.append(len(ds))
        yield raw_frame(ds[0], pkg.chunks[ds[0]])
        while not stop.stopped:  # then nothing: alive, but useless
            time.sleep(0.02)
        raise TransferError("stopped")

    inst, calls, _ = _install_with_peer(tmp_path, trickle, pkg)
    assert inst.state is InstallState.INSTALLED
    assert len(asked) == 1, "a slow peer is asked no more"
    assert sum(calls) == len(pkg.chunks) - 1, "the site sent all but what the peer managed"


# --- the site's work for base hints ---------------------------------------------------------


def test_a_request_reads_each_base_once_and_within_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from packdist.site import content_routes as server

    monkeypatch.setattr(server, "BASE_BUDGET", 250)
    reads: list[Digest] = []

    def read(d: Digest) -> bytes | None:
        reads.append(d)
        return b"x" * 100

    bases = server._Bases()
    a, b, c, d = digests(4)
    assert bases.get(a, read) == b"x" * 100
    assert bases.get(a, read) == b"x" * 100  # cached: not read again
    assert bases.get(b, read) is not None and bases.get(c, read) is not None
    assert bases.get(d, read) is None, "the budget (250 bytes) is spent"
    assert reads == [a, b, c]


def test_a_peer_heard_from_since_the_swarm_was_read_is_offered_at_once() -> None:
    heard: dict[str, float] = {}
    index = SwarmIndex(heard=heard.get)
    # read while none of them had been heard from (their agents were still starting)
    swarm = index.load(PKG, [member("dp1", seen=None), member("dp2", seen=None)], NOW)
    assert swarm.offers("dp1", PKG, KEY, NOW + 0.5) == []
    heard["dp2"] = NOW + 0.4  # the site heard dp2 since: no new read needed to offer it
    assert [o.name for o in swarm.offers("dp1", PKG, KEY, NOW + 0.5)] == ["dp2"]
