"""The import's pipeline and chunk writer: the library it leaves, and when the package is
recorded (see ``packdist/site/import_pipeline.py``)."""

from __future__ import annotations

import errno
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from packdist.core.chunking import Chunker
from packdist.core.digest import Digest
from packdist.core.manifest import Manifest
from packdist.service import Service
from packdist.site.home import SiteHome
from packdist.site.import_pipeline import SEGMENT_BYTES, ChunkFiles
from packdist.site.importer import import_tree
from packdist.site.library import ContentLibrary


def library_contents(library: ContentLibrary) -> dict[str, bytes]:
    """Every file under the library, by its path inside it (temporaries included)."""
    out = {}
    for dirpath, _dirs, names in os.walk(library.root):
        for name in names:
            path = Path(dirpath, name)
            out[str(path.relative_to(library.root))] = path.read_bytes()
    return out


def reference_library(root: Path, tree: Path, chunker: Chunker) -> ContentLibrary:
    """The library the import wrote before the pipeline had a writer of its own: every chunk
    of every file, cut and hashed in one piece and stored by ``ContentLibrary.write``."""
    library = ContentLibrary(root)
    library.create()
    for dirpath, _dirs, names in os.walk(tree):
        for name in sorted(names):
            for data in chunker.cut_file(Path(dirpath, name)):
                library.write(Digest.of(data), bytes(data))
    return library


@pytest.fixture
def home(tmp_path: Path) -> SiteHome:
    return SiteHome.init(tmp_path / "site", "s")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Duplicates across and inside files, empty files, and a file spanning segments."""
    rng = random.Random(7)
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    big = rng.randbytes(2 * SEGMENT_BYTES + 3 * 1024 * 1024 + 17)
    (root / "big").write_bytes(big)
    (root / "sub" / "big-again").write_bytes(big)  # every chunk already written
    block = rng.randbytes(600 * 1024)
    (root / "repeats").write_bytes(block * 5 + b"tail")  # the same chunks inside one file
    for name in ("empty", "sub/empty", "sub/deeper/empty"):
        (root / name).write_bytes(b"")
    for i in range(40):
        (root / "sub" / f"small-{i}").write_bytes(b"same small file\n" if i % 2 else bytes([i]))
    return root


def test_a_tree_with_duplicates_and_empty_files_leaves_the_library_the_old_writer_did(
    home: SiteHome, tree: Path, tmp_path: Path
) -> None:
    record, created = import_tree(home, tree, "app", "1")
    assert created

    expected = library_contents(reference_library(tmp_path / "ref", tree, Chunker()))
    assert library_contents(home.library) == expected  # same names, same bytes, nothing else
    store = home.store()
    try:
        manifest = Manifest.parse(store.package_manifest(record.id)[0])
        assert store.known_chunks(list(manifest.chunk_sizes())) == set(manifest.chunk_sizes())
    finally:
        store.close()
    for entry in manifest.files():
        path = tree / entry.path
        assert b"".join(home.library.read(c.digest) for c in entry.chunks) == path.read_bytes()


def test_a_partial_chunk_file_left_by_a_killed_import_is_replaced_whole(
    home: SiteHome, tree: Path
) -> None:
    data = (tree / "repeats").read_bytes()
    first = Chunker().cut_bytes(data)[0]
    digest = Digest.of(first)
    home.library.path(digest).write_bytes(first[:100])  # what a SIGKILL mid-write leaves

    import_tree(home, tree, "app", "1")

    assert home.library.read(digest) == first
    assert home.library.check(digest, len(first)) is None


def test_the_package_is_recorded_only_once_its_chunks_are_synced(
    home: SiteHome, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_sync, real_add = ContentLibrary.sync, Service.add_package

    def slow_sync(self: ContentLibrary) -> None:
        events.append("sync started")
        time.sleep(0.3)  # the manifest is signed meanwhile: recording must still wait
        real_sync(self)
        events.append("sync done")

    def add_package(self: Service, *args: object, **kwargs: object) -> object:
        events.append("recorded")
        return real_add(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ContentLibrary, "sync", slow_sync)
    monkeypatch.setattr(Service, "add_package", add_package)
    import_tree(home, tree, "app", "1")
    assert events == ["sync started", "sync done", "recorded"]


def test_a_failed_syncfs_records_nothing_and_removes_the_new_chunks(
    home: SiteHome, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = library_contents(home.library)

    def failing_sync(self: ContentLibrary) -> None:
        raise OSError(errno.EIO, "Input/output error", str(self.root))

    monkeypatch.setattr(ContentLibrary, "sync", failing_sync)
    with pytest.raises(OSError, match="Input/output error"):
        import_tree(home, tree, "app", "1")

    assert library_contents(home.library) == before
    store = home.store()
    try:
        assert store.find_package("app", "1") is None
    finally:
        store.close()


#: a chunk write under a file-size limit, in a process of its own: the limit would also
#: stop this process's own writes (pytest's output to a log file already past it)
LIMITED_WRITE = """
import errno, random, sys
from pathlib import Path
from packdist.core.digest import Digest
from packdist.site.import_pipeline import ChunkFiles
from packdist.site.library import ContentLibrary
files = ChunkFiles(ContentLibrary(Path(sys.argv[1])))
data = random.Random(3).randbytes(3 * int(sys.argv[2]))
try:
    files.write(Digest.of(data), memoryview(data))
except OSError as exc:
    print(errno.errorcode[exc.errno])
finally:
    files.close()
"""


def _limit_file_size(limit: int) -> None:
    """In the child: files may not grow past ``limit`` (writes fail with EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def test_a_chunk_write_that_fails_part_way_leaves_no_file_behind(tmp_path: Path) -> None:
    library = ContentLibrary(tmp_path / "library")
    library.create()
    limit = 4096
    child = subprocess.run(
        [sys.executable, "-c", LIMITED_WRITE, str(library.root), str(limit)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: _limit_file_size(limit),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=60,
        check=False,
    )
    assert child.stdout.strip() == "EFBIG", child.stderr
    assert library_contents(library) == {}


def test_chunk_writes_from_many_threads_each_land_whole(tmp_path: Path) -> None:
    library = ContentLibrary(tmp_path / "library")
    library.create()
    files = ChunkFiles(library)
    rng = random.Random(5)
    chunks = [rng.randbytes(rng.randint(0, 70_000)) for _ in range(300)]
    chunks += chunks[:50]  # some written twice, concurrently: the second replaces the first

    def write(part: list[bytes]) -> None:
        for data in part:
            files.write(Digest.of(data), memoryview(data))

    threads = [threading.Thread(target=write, args=(chunks[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files.close()
    stored = library_contents(library)
    assert stored == {f"{Digest.of(c).shard}/{Digest.of(c).hex}": c for c in chunks}


def test_an_import_that_gives_up_removes_only_the_chunk_files_it_wrote_itself(
    tmp_path: Path,
) -> None:
    # import A wrote X, then import B wrote X again (its own file under the name, which B
    # is about to record); A fails: B's file stays. A chunk A never wrote is not touched.
    library = ContentLibrary(tmp_path / "library")
    library.create()
    a, b = ChunkFiles(library), ChunkFiles(library)
    x, mine, never = b"shared chunk" * 100, b"only a's" * 100, b"b's alone" * 100
    try:
        a.write(Digest.of(x), memoryview(x))
        a.write(Digest.of(mine), memoryview(mine))
        b.write(Digest.of(x), memoryview(x))  # the name exists: replaced whole by b
        b.write(Digest.of(never), memoryview(never))
        for digest in [*a.created, Digest.of(never)]:
            a.discard_own(digest)
    finally:
        a.close()
        b.close()
    left = {
        f"{d.shard}/{d.hex}": data for d, data in ((Digest.of(x), x), (Digest.of(never), never))
    }
    assert library_contents(library) == left
