"""The stages of ``packdist fetch`` on a real disk, with sources that are functions handing
out frames (the network is the integration and lab tiers' part): the staging tree laid out
and resumed, chunks reused from the older version in DIR, each source in turn with a
failed, lying or empty one passed over at once, DIR replaced in one step."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from packdist.auth import CLIENT_TTL
from packdist.client.commit import put_in_place
from packdist.client.staging import Places, WritePlan, fill_locally, lay_out
from packdist.client.transfer import Ask, Progress, Requester, fetch_missing
from packdist.core.digest import Digest
from packdist.errors import AuthError, ConnectError, PackdistError, TransferError, UserError
from packdist.http import MISSING, Frame
from packdist.protocol.chunk_stream import ChunkStreams, StreamStop
from packdist.protocol.client_api import SITE, Source
from tests.unit.test_agent_home import Package, package, raw_frame, tree_of

SITE_SOURCE = Source(SITE, "https://site:8700", None, is_site=True)
DP1 = Source("dp1", "https://dp1:8701", "a")
DP2 = Source("dp2", "https://dp2:8701", "b")


def app(n: int, shared: bytes = b"s" * 30_000) -> Package:
    return package("app", str(n), {"lib/shared.bin": shared, "lib/own.bin": os.urandom(9_000)})


def holding(
    pkg: Package, fail_after: int | None = None, lie: bool = False, has: bool = True
) -> Ask:
    """A source that holds ``pkg`` (or not: MISSING), fails after some chunks, or lies."""

    def ask(source: Source, digests: list[Digest], stop: StreamStop) -> Iterator[Frame]:
        for i, d in enumerate(digests):
            if fail_after is not None and i >= fail_after:
                raise ConnectError(f"cannot connect to {source.name}")
            if not has:
                yield Frame(d, MISSING, 0, b"")
            elif lie:
                yield raw_frame(d, b"x" * len(pkg.chunks[d]))
            else:
                yield raw_frame(d, pkg.chunks[d])

    return ask


def by_source(asks: dict[str, Ask]) -> Ask:
    def ask(source: Source, digests: list[Digest], stop: StreamStop) -> Iterator[Frame]:
        return asks[source.name](source, digests, stop)

    return ask


def staged(places: Places, pkg: Package) -> WritePlan:
    resumed = lay_out(places, pkg.manifest)
    plan = WritePlan(pkg.manifest, places.tree)
    older = places.installed()
    fill_locally(plan, resumed, (older, places.into) if older else None)
    return plan


def install(places: Places, pkg: Package, ask: Ask, progress: Progress | None = None) -> Progress:
    plan = staged(places, pkg)
    progress = progress or Progress()
    try:
        fetch_missing(plan, [DP1, DP2, SITE_SOURCE], ask, progress)
    finally:
        plan.close()
    put_in_place(places, pkg.manifest)
    return progress


def test_a_fetch_puts_the_exact_tree_in_dir_from_the_first_source(tmp_path: Path) -> None:
    pkg = app(1)
    places = Places.of(tmp_path / "app")
    progress = install(places, pkg, holding(pkg))
    assert tree_of(places.into) == pkg.files
    assert set(progress.by_source) == {"dp1"} and not progress.dropped
    assert sorted(p.name for p in tmp_path.iterdir()) == [".app.packdist-manifest", "app"]


def test_a_source_that_fails_midway_hands_the_rest_to_the_next_at_once(tmp_path: Path) -> None:
    pkg = app(1)
    places = Places.of(tmp_path / "app")
    ask = by_source({"dp1": holding(pkg, fail_after=1), "dp2": holding(pkg), SITE: holding(pkg)})
    progress = install(places, pkg, ask)
    assert tree_of(places.into) == pkg.files
    assert progress.by_source["dp1"] > 0 and progress.by_source["dp2"] > 0
    assert SITE not in progress.by_source
    assert [name for name, _ in progress.dropped] == ["dp1"]


def test_a_chunk_that_does_not_verify_is_refused_and_fetched_elsewhere(tmp_path: Path) -> None:
    pkg = app(1)
    places = Places.of(tmp_path / "app")
    ask = by_source(
        {"dp1": holding(pkg, lie=True), "dp2": holding(pkg, has=False), SITE: holding(pkg)}
    )
    progress = install(places, pkg, ask)
    assert tree_of(places.into) == pkg.files
    assert "dp1" not in progress.by_source and "dp2" not in progress.by_source
    (why,) = [w for name, w in progress.dropped if name == "dp1"]
    assert "hash mismatch" in why


def test_when_no_source_has_a_chunk_the_fetch_fails_and_dir_is_untouched(tmp_path: Path) -> None:
    pkg = app(1)
    places = Places.of(tmp_path / "app")
    with pytest.raises(TransferError, match="could not be fetched from any source"):
        install(places, pkg, holding(pkg, has=False))
    assert not places.into.exists()


def test_a_newer_version_takes_the_chunks_it_shares_from_dir(tmp_path: Path) -> None:
    v1, v2 = app(1), app(2)
    places = Places.of(tmp_path / "app")
    install(places, v1, holding(v1))
    before = places.into.stat().st_ino
    plan = staged(places, v2)
    shared = {d for d in v1.chunks if d in v2.chunks}
    assert shared and not shared & set(plan.missing)  # none of those fetched again
    plan.close()
    progress = install(places, v2, holding(v2))
    assert progress.by_source["dp1"] == sum(len(v2.chunks[d]) for d in v2.chunks if d not in shared)
    assert tree_of(places.into) == v2.files and places.into.stat().st_ino != before


def test_a_stopped_fetch_resumes_keeping_the_chunks_already_staged(tmp_path: Path) -> None:
    pkg = app(1)
    places = Places.of(tmp_path / "app")
    plan = staged(places, pkg)
    with pytest.raises(TransferError):
        fetch_missing(plan, [DP1], holding(pkg, fail_after=2), Progress())
    plan.close()
    plan = staged(places, pkg)  # as the next run finds it
    assert 0 < len(plan.missing) < len(pkg.chunks)
    plan.close()
    progress = install(places, pkg, holding(pkg))
    assert tree_of(places.into) == pkg.files
    assert progress.by_source["dp1"] < sum(len(c) for c in pkg.chunks.values())


def test_staging_of_another_version_is_dropped_not_resumed(tmp_path: Path) -> None:
    places = Places.of(tmp_path / "app")
    lay_out(places, app(1).manifest)
    assert lay_out(places, app(2).manifest) is False


def test_dir_that_is_a_file_or_under_no_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        Places.of(tmp_path / "file")
    with pytest.raises(UserError, match="is not a directory"):
        Places.of(tmp_path / "nowhere" / "app")


def test_a_second_fetch_into_the_same_dir_is_refused_while_one_runs(tmp_path: Path) -> None:
    places = Places.of(tmp_path / "app")
    with places.locked(), pytest.raises(UserError, match="another fetch"), places.locked():
        pass


def test_a_long_fetch_renews_its_credential_and_a_refused_renewal_stops_it() -> None:
    streams = ChunkStreams(ssl.create_default_context())
    try:
        asked: list[str] = []

        def renew() -> str:
            asked.append("renew")
            return "new"

        fresh = Requester(streams, "ab" * 32, "old", "token", renew)
        list_of = [Digest.of(b"x")]
        with pytest.raises(PackdistError):  # nobody listens there: but the renewal came first
            list(fresh(Source("dp1", "http://127.0.0.1:9", None), list_of, StreamStop()))
        assert asked == [] and fresh.credential == "old"  # young: kept
        fresh._issued -= CLIENT_TTL
        with pytest.raises(PackdistError):
            list(fresh(Source("dp1", "http://127.0.0.1:9", None), list_of, StreamStop()))
        assert asked == ["renew"] and fresh.credential == "new"

        def refused() -> str:
            raise AuthError("the site refused the token: unknown or removed client token")

        removed = Requester(streams, "ab" * 32, "old", "token", refused)
        removed._issued -= CLIENT_TTL
        with pytest.raises(AuthError, match="removed client"):
            list(removed(Source("dp1", "http://127.0.0.1:9", None), list_of, StreamStop()))
    finally:
        streams.close()


def test_a_slow_source_is_stopped_and_the_rest_comes_from_the_next(tmp_path: Path) -> None:
    pkg = app(1)
    places = Places.of(tmp_path / "app")

    def slow(source: Source, digests: list[Digest], stop: StreamStop) -> Iterator[Frame]:
        for d in digests:  # as a stream does: the stop ends the read it is blocked in
            for _ in range(50):
                stop.check()
                time.sleep(0.01)
            yield raw_frame(d, pkg.chunks[d])

    plan = staged(places, pkg)
    progress = Progress()
    started = time.monotonic()
    try:
        fetch_missing(
            plan,
            [DP1, DP2],
            by_source({"dp1": slow, "dp2": holding(pkg)}),
            progress,
            slow_after=0.3,
        )
    finally:
        plan.close()
    assert time.monotonic() - started < 5
    assert not plan.missing and progress.by_source["dp2"] > 0
    (why,) = [w for name, w in progress.dropped if name == "dp1"]
    assert "too slow" in why
