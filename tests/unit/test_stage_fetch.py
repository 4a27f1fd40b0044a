"""The fetch stage alone (agent/fetch_stage.py): chunks streamed by an in-process site and
peers (real async generators of frames), each decoded and verified before it is written at
every one of its places in a real staging tree; what is refused, and what a cut keeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from packdist.agent.bases import BaseChunk
from packdist.agent.fetch_stage import FETCH_ERROR_PREFIX, FetchChunks, FetchStage, PeerFetch
from packdist.agent.local_stage import fill_locally
from packdist.agent.sources import Peer
from packdist.agent.write_plan import WritePlan
from packdist.core.codec import Encoding, encode
from packdist.core.digest import Digest
from packdist.errors import DecodeError, HashMismatch, PackdistError, RemoteError, TransferError
from packdist.http import Frame
from tests.fuzzing import fuzz, tried
from tests.unit.stage_rig import Staged, new_home, stage
from tests.unit.test_agent_home import Package, raw_frame, serve, tree_of, v

HOLDER = Peer("dp2", "http://dp2:8701", "token", holder=True)


def staged(tmp_path: Path, pkg: Package | None = None) -> Staged:
    return stage(new_home(tmp_path / "agent"), pkg or v(1))


def fetch(
    s: Staged,
    site: FetchChunks,
    missing: list[Digest] | None = None,
    peer_fetch: PeerFetch | None = None,
) -> None:
    """Run the fetch stage for ``missing`` (default: every chunk), then close the plan."""
    if peer_fetch is not None:
        s.inst.peers, s.inst.me = [HOLDER], "dp1"

    async def run() -> None:
        try:
            await FetchStage(site, peer_fetch=peer_fetch).fetch_missing(
                s.inst, s.plan, s.staging, list(s.plan.locations) if missing is None else missing
            )
        finally:
            await asyncio.to_thread(s.plan.close)

    asyncio.run(run())


def site_of(frames: Callable[[list[Digest]], list[Frame]], cut: bool = False) -> FetchChunks:
    """A site streaming ``frames(asked)``, then cut off (a reset) if ``cut``."""

    def site(asked: list[Digest], bases: object = None, stop: object = None) -> Iterator[Frame]:
        yield from frames(asked)
        if cut:
            raise TransferError("connection reset by http://site:8700")

    return site


def in_order(s: Staged) -> list[Digest]:
    return list(s.plan.locations)


# --- what lands -----------------------------------------------------------------------------


def test_every_chunk_from_the_site_lands_at_each_of_its_places(tmp_path: Path) -> None:
    s = staged(tmp_path)
    repeated = max(s.plan.locations, key=lambda d: len(s.plan.locations[d]))
    assert len(s.plan.locations[repeated]) > 1, "the package repeats a chunk"
    fetch(s, serve(s.pkg))
    assert s.have == set(s.pkg.chunks)
    assert tree_of(s.staging) == s.pkg.files
    assert s.inst.bytes_received == sum(s.plan.sizes.values())


def test_a_chunk_sent_compressed_is_decoded_before_it_is_verified_and_written(
    tmp_path: Path,
) -> None:
    s = staged(tmp_path)
    zstd = zstandard.ZstdCompressor()

    def frames(asked: list[Digest]) -> list[Frame]:
        out = []
        for d in asked:
            payload = zstd.compress(s.pkg.chunks[d])
            out.append(Frame(d, Encoding.ZSTD, len(payload), payload))
        return out

    fetch(s, site_of(frames))
    assert tree_of(s.staging) == s.pkg.files


# --- what is refused ------------------------------------------------------------------------


def test_a_chunk_not_asked_for_is_refused_and_written_nowhere(tmp_path: Path) -> None:
    s = staged(tmp_path)
    asked, other = in_order(s)[:2], in_order(s)[2]

    def frames(ds: list[Digest]) -> list[Frame]:  # one of the package's own, not asked for
        return [raw_frame(other, s.pkg.chunks[other]), *(raw_frame(d, s.pkg.chunks[d]) for d in ds)]

    with pytest.raises(RemoteError, match="not asked for") as caught:
        fetch(s, site_of(frames), missing=asked)
    assert caught.value.message.startswith(FETCH_ERROR_PREFIX)
    assert all(s.blank(other)), "an unasked chunk is written nowhere"
    assert s.have == set()


def test_a_chunk_whose_bytes_do_not_match_is_refused_and_those_before_it_kept(
    tmp_path: Path,
) -> None:
    s = staged(tmp_path)
    good, bad = in_order(s)[:2], in_order(s)[2]

    def frames(ds: list[Digest]) -> list[Frame]:
        out = [raw_frame(d, s.pkg.chunks[d]) for d in good]
        return [*out, raw_frame(bad, b"\1" * s.plan.sizes[bad])]  # the right size, wrong bytes

    with pytest.raises(HashMismatch, match=bad.short):
        fetch(s, site_of(frames), missing=[*good, bad])
    assert all(s.blank(bad)), "the wrong bytes are written nowhere"
    assert s.have == set(good)
    assert all(all(s.holds(d)) for d in good)


def test_a_chunk_that_decodes_beyond_its_size_is_refused(tmp_path: Path) -> None:
    s = staged(tmp_path)
    d = in_order(s)[0]
    payload = zstandard.ZstdCompressor().compress(s.pkg.chunks[d] + b"and more")

    with pytest.raises(DecodeError, match="cannot decode chunk"):
        fetch(s, site_of(lambda ds: [Frame(d, Encoding.ZSTD, len(payload), payload)]), [d])
    assert all(s.blank(d)) and s.have == set()


def test_a_chunk_encoded_against_a_base_this_agent_did_not_offer_is_refused(
    tmp_path: Path,
) -> None:
    s = staged(tmp_path)
    d = in_order(s)[0]
    payload = zstandard.ZstdCompressor().compress(s.pkg.chunks[d])
    with pytest.raises(DecodeError, match="against a base this agent did not offer"):
        fetch(s, site_of(lambda ds: [Frame(d, Encoding.ZSTD_BASE, len(payload), payload)]), [d])
    assert all(s.blank(d))


@pytest.mark.parametrize("damaged", [False, True])
def test_a_chunk_encoded_against_its_base_lands_only_while_the_base_verifies(
    tmp_path: Path, damaged: bool
) -> None:
    s = staged(tmp_path)
    d = in_order(s)[-1]
    base = bytes(b ^ (i % 7 == 0) for i, b in enumerate(s.pkg.chunks[d]))  # a near copy
    old = tmp_path / "old.bin"  # where an installed version holds the base chunk
    old.write_bytes(base)
    s.plan.bases[d] = [BaseChunk(Digest.of(base), str(old), 0, len(base))]
    encoding, payload = encode(s.pkg.chunks[d], frozenset(Encoding), base)
    assert encoding is Encoding.ZSTD_BASE
    if damaged:  # the installed version changed since the request named it
        old.write_bytes(b"\0" + base[1:])
    frame = Frame(d, encoding, len(s.pkg.chunks[d]), payload)
    if damaged:
        with pytest.raises(DecodeError, match="base chunks are no longer intact"):
            fetch(s, site_of(lambda ds: [frame]), [d])
        assert all(s.blank(d))
    else:
        fetch(s, site_of(lambda ds: [frame]), [d])
        assert all(s.holds(d)) and s.have == {d}


def test_a_stream_that_ends_short_says_how_many_chunks_it_lacked(tmp_path: Path) -> None:
    s = staged(tmp_path)
    with pytest.raises(TransferError, match=r"ended with 2 chunk\(s\) missing"):
        fetch(s, site_of(lambda ds: [raw_frame(d, s.pkg.chunks[d]) for d in ds[:-2]]))
    assert len(s.have) == len(s.plan.locations) - 2


# --- a cut ----------------------------------------------------------------------------------


def test_a_cut_keeps_every_chunk_that_arrived_whole_and_a_resume_asks_only_for_the_rest(
    tmp_path: Path,
) -> None:
    s = staged(tmp_path)
    arrived = in_order(s)[:3]
    with pytest.raises(TransferError, match="connection reset") as caught:
        fetch(s, site_of(lambda ds: [raw_frame(d, s.pkg.chunks[d]) for d in arrived], cut=True))
    assert caught.value.message.startswith(FETCH_ERROR_PREFIX + "connection reset")
    assert s.have == set(arrived)
    assert all(all(s.holds(d)) for d in arrived), "what arrived whole is on disk"

    # the next attempt finds them in staging (re-verified) and fetches only the rest
    plan = WritePlan(s.pkg.manifest)
    missing = fill_locally(s.home, s.inst, plan, s.staging, resumed=True)
    assert set(missing) == set(s.pkg.chunks) - set(arrived)
    calls: list[int] = []
    s.plan = plan
    fetch(s, serve(s.pkg, calls=calls), missing=missing)
    assert sum(calls) == len(missing)
    assert tree_of(s.staging) == s.pkg.files


# --- peers ------------------------------------------------------------------------------------


def peer_of(frames: Callable[[list[Digest]], list[Frame]], cut: bool = False) -> PeerFetch:
    def peer(p: Peer, package_id: str, ds: list[Digest], stop: object) -> Iterator[Frame]:
        yield from frames(ds)
        if cut:
            raise TransferError(f"connection reset by {p.url}")

    return peer


def test_a_peer_that_sends_wrong_bytes_is_dropped_and_the_site_sends_its_share(
    tmp_path: Path,
) -> None:
    s = staged(tmp_path)
    calls: list[int] = []
    liar = peer_of(lambda ds: [raw_frame(d, b"\1" * s.plan.sizes[d]) for d in ds])
    fetch(s, serve(s.pkg, calls=calls), peer_fetch=liar)
    assert tree_of(s.staging) == s.pkg.files
    assert sum(calls) == len(s.pkg.chunks), "the site sent every chunk"
    assert s.inst.bytes_from_peers == 0, "a liar's bytes do not count as from peers"


def test_a_peer_cut_off_keeps_what_arrived_whole_and_the_site_sends_only_the_rest(
    tmp_path: Path,
) -> None:
    s = staged(tmp_path)
    calls: list[int] = []
    first = in_order(s)[:5]
    cut = peer_of(lambda ds: [raw_frame(d, s.pkg.chunks[d]) for d in ds if d in first], cut=True)
    fetch(s, serve(s.pkg, calls=calls), peer_fetch=cut)
    assert tree_of(s.staging) == s.pkg.files
    assert sum(calls) == len(s.pkg.chunks) - len(first)
    assert s.inst.bytes_from_peers == sum(raw_frame(d, s.pkg.chunks[d]).wire_bytes for d in first)


def test_a_peer_sending_a_compressed_chunk_is_dropped(tmp_path: Path) -> None:
    s = staged(tmp_path)
    calls: list[int] = []
    zstd = zstandard.ZstdCompressor()

    def frames(ds: list[Digest]) -> list[Frame]:
        return [Frame(d, Encoding.ZSTD, 0, zstd.compress(s.pkg.chunks[d])) for d in ds]

    fetch(s, serve(s.pkg, calls=calls), peer_fetch=peer_of(frames))
    assert tree_of(s.staging) == s.pkg.files
    assert sum(calls) == len(s.pkg.chunks) and s.inst.bytes_from_peers == 0


# --- whatever the site sends ------------------------------------------------------------------

KIND = st.sampled_from(["good", "wrong bytes", "wrong size", "unasked", "again"])


@fuzz(25)
@given(st.lists(KIND, max_size=40), st.booleans())
def test_whatever_the_site_sends_only_verified_bytes_are_written(
    tmp_path_factory: pytest.TempPathFactory, kinds: list[str], cut: bool
) -> None:
    """A stream of good chunks, wrong ones, unasked ones, repeats, ending or cut anywhere:
    the stage fails with a packdist error or succeeds, and every place in the staging tree
    holds either its chunk (then counted as landed) or the layout's zeros."""
    tried("fetch stage: any stream of frames from the site")
    s = staged(tmp_path_factory.mktemp("fetch"), v(7))
    order = in_order(s)
    unasked = Digest.of(b"not in this package")

    def frames(ds: list[Digest]) -> list[Frame]:
        out = []
        for i, kind in enumerate(kinds):
            d = ds[i % len(ds)]
            data = s.pkg.chunks[d]
            if kind == "good":
                out.append(raw_frame(d, data))
            elif kind == "wrong bytes":
                out.append(raw_frame(d, bytes(b ^ 1 for b in data)))
            elif kind == "wrong size":
                out.append(raw_frame(d, data[:-1]))
            elif kind == "unasked":
                out.append(raw_frame(unasked, b"x"))
            elif kind == "again" and out:
                out.append(out[-1])
        return out

    try:
        fetch(s, site_of(frames, cut=cut), missing=order)
    except PackdistError:
        pass
    for d in order:
        if d in s.have:
            assert all(s.holds(d)), f"chunk {d.short} counted as landed but not on disk"
        else:
            assert all(s.blank(d)), f"chunk {d.short} written though it never verified"
