"""Deltas kept by the site (``packdist/site/delta_cache.py``) and prepared at import
(``packdist/site/delta_prepare.py``): what is kept, what a damaged entry does, and that each
prepared delta decodes to its chunk against the bases an agent holding the last version
names."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from packdist.core import codec
from packdist.core.codec import Encoding
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest
from packdist.site import delta_prepare
from packdist.site.delta_cache import PER_CHUNK, DeltaCache, OneAtATime
from packdist.site.delta_prepare import Prepared, planned_bases
from packdist.site.home import SiteHome
from packdist.site.importer import import_tree

KiB = 1024


def digests(n: int) -> list[Digest]:
    return [Digest.of(bytes([i])) for i in range(n)]


def test_a_kept_delta_is_read_back_for_the_same_bases_only(tmp_path: Path) -> None:
    cache = DeltaCache(tmp_path / "deltas")
    chunk, a, b = digests(3)
    cache.put(chunk, [a, b], Encoding.ZSTD_BASE, b"delta bytes")
    assert cache.get(chunk, [a, b]) == (Encoding.ZSTD_BASE, b"delta bytes")
    assert cache.get(chunk, [b, a]) is None, "the bases' order is part of the delta"
    assert cache.get(chunk, [a]) is None


def test_a_delta_that_does_not_pay_is_kept_as_raw(tmp_path: Path) -> None:
    cache = DeltaCache(tmp_path / "deltas")
    chunk, a = digests(2)
    cache.put(chunk, [a], Encoding.RAW, b"the whole chunk, not kept")
    assert cache.get(chunk, [a]) == (Encoding.RAW, b"")


def test_a_damaged_kept_delta_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    cache = DeltaCache(tmp_path / "deltas")
    chunk, a = digests(2)
    cache.put(chunk, [a], Encoding.ZSTD_BASE, b"x" * 100)
    (entry,) = (tmp_path / "deltas").rglob("*.*")
    data = bytearray(entry.read_bytes())
    data[-1] ^= 1
    entry.write_bytes(bytes(data))
    assert cache.get(chunk, [a]) is None
    assert not entry.exists()
    entry.parent.mkdir(exist_ok=True)
    entry.write_bytes(b"short")  # torn before its check was whole
    assert cache.get(chunk, [a]) is None


def test_a_cache_that_cannot_be_written_only_keeps_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "deltas").write_bytes(b"a file where the folder should be")
    cache = DeltaCache(tmp_path / "deltas")
    chunk, a = digests(2)
    cache.put(chunk, [a], Encoding.ZSTD_BASE, b"delta")
    cache.put(chunk, [a], Encoding.ZSTD_BASE, b"delta")
    assert cache.get(chunk, [a]) is None
    assert len([r for r in caplog.records if "cannot keep a delta" in r.message]) == 1


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    rnd = random.Random(11)
    v1 = tmp_path / "v1"
    (v1 / "data").mkdir(parents=True)
    files = {"data/big.bin": 3 * 1024 * KiB, "data/small.bin": 300 * KiB, "gone.bin": 200 * KiB}
    for rel, size in files.items():
        (v1 / rel).write_bytes(rnd.randbytes(size))
    v2 = tmp_path / "v2"
    (v2 / "data").mkdir(parents=True)
    big = bytearray((v1 / "data/big.bin").read_bytes())
    for offset in (100 * KiB, 1500 * KiB, 2900 * KiB):
        big[offset : offset + 2 * KiB] = rnd.randbytes(2 * KiB)
    (v2 / "data/big.bin").write_bytes(bytes(big))
    (v2 / "data/small.bin").write_bytes((v1 / "data/small.bin").read_bytes())
    (v2 / "new.bin").write_bytes(rnd.randbytes(150 * KiB))  # no earlier file: no bases
    return v1, v2


def _manifest(home: SiteHome, package_id: str) -> Manifest:
    store = home.store()
    try:
        return Manifest.parse(store.package_manifest(package_id)[0])
    finally:
        store.close()


def test_an_import_prepares_each_new_chunks_delta_against_the_last_version(
    tmp_path: Path,
) -> None:
    home = SiteHome.init(tmp_path / "site", "s")
    v1, v2 = _trees(tmp_path)
    told: list[Prepared | str] = []
    first, _ = import_tree(home, v1, "app", "1", prepared=told.append)
    assert told == [Prepared("", 0, 0, 0, 0, 0, 0.0)], "nothing earlier: nothing to prepare"
    second, _ = import_tree(home, v2, "app", "2", prepared=told.append)
    done = told[1]
    assert isinstance(done, Prepared) and done.against == "app@1"
    m1, m2 = _manifest(home, first.id), _manifest(home, second.id)
    old = {c.digest for _, _, c in m1.chunk_places()}
    sizes = {c.digest: c.size for _, _, c in m2.chunk_places()}
    new = set(sizes) - old
    plan = planned_bases(m2, m1, new)
    assert done.chunks == len(plan) and done.whole == done.skipped == 0
    assert 3 <= len(plan) < len(new), "the edited chunks of big.bin, not new.bin's"
    library = home.library
    delta_bytes = 0
    for digest, bases in plan.items():
        kept = library.deltas.get(digest, bases)
        assert kept is not None and kept[0] == Encoding.ZSTD_BASE
        assert len(kept[1]) < 16 * KiB, "a 2 KiB edit crosses as a few KiB"
        base = b"".join(library.read(b) for b in bases)
        decoded = codec.decode(Encoding.ZSTD_BASE, kept[1], sizes[digest], digest, base)
        assert decoded == library.read(digest)
        delta_bytes += len(kept[1])
    assert done.delta_bytes == delta_bytes


def test_an_import_prepares_deltas_within_its_bound_and_leaves_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = SiteHome.init(tmp_path / "site", "s")
    v1, v2 = _trees(tmp_path)
    import_tree(home, v1, "app", "1")
    monkeypatch.setattr(delta_prepare, "PREPARE_BYTES", 1)
    told: list[Prepared | str] = []
    import_tree(home, v2, "app", "2", prepared=told.append)
    (done,) = told
    assert isinstance(done, Prepared)
    assert done.chunks == 0 and done.skipped >= 3
    assert not (home.library.root / "deltas").exists()


def test_a_chunk_keeps_a_few_deltas_at_most_whatever_bases_are_named(tmp_path: Path) -> None:
    cache = DeltaCache(tmp_path / "deltas")
    chunk, *bases = digests(PER_CHUNK + 3)
    for b in bases:
        cache.put(chunk, [b], Encoding.ZSTD_BASE, b"delta")
    assert sum(cache.get(chunk, [b]) is not None for b in bases) == PER_CHUNK


def test_agents_asking_for_one_delta_at_once_wait_for_the_first_to_make_it() -> None:
    gate = OneAtATime()
    chunk, a, b = digests(3)
    inside: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def first() -> None:
        with gate.one(chunk, [a]):
            inside.append("first in")
            first_in.set()
            release.wait(5)
            inside.append("first out")

    def second() -> None:
        with gate.one(chunk, [a]):
            inside.append("second in")

    t1 = threading.Thread(target=first)
    t1.start()
    first_in.wait(5)
    t2 = threading.Thread(target=second)
    t2.start()
    with gate.one(chunk, [b]):  # another delta is not held up
        inside.append("other")
    time.sleep(0.05)
    release.set()
    t1.join(5)
    t2.join(5)
    assert inside == ["first in", "other", "first out", "second in"]
