"""``packdist package …`` through the real command, against a real site home.

Every refusal is checked the same way: non-zero exit, exactly one line on stderr naming the
offending path or name, no traceback, and the site (files under ``library/`` plus the rows of
``packages`` and ``chunks``) byte-for-byte as it was before.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pytest

from packdist.core.signing import SigningKey
from tests.conftest import PACKDIST, run_packdist

Snapshot = tuple[list[tuple[str, int]], list[tuple[Any, ...]], list[tuple[Any, ...]]]


# --- helpers ------------------------------------------------------------------------------


def library_files(home: Path) -> list[tuple[str, int]]:
    """Every file under ``library/`` (chunks and temporaries) with its size."""
    lib = home / "library"
    out = []
    for dirpath, _dirs, names in os.walk(lib):
        for n in names:
            p = Path(dirpath) / n
            out.append((str(p.relative_to(lib)), p.lstat().st_size))
    return sorted(out)


def library_names(home: Path) -> set[str]:
    """Names of the files under ``library/`` right now (safe while an import runs)."""
    return {n for _dirpath, _dirs, names in os.walk(home / "library") for n in names}


def chunk_files(home: Path) -> set[str]:
    """Digests of the complete chunk files in the library (temporaries excluded)."""
    return {Path(p).name for p, _ in library_files(home) if not Path(p).name.startswith(".")}


def db_rows(home: Path, table: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(home / "site.db")) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def snapshot(home: Path) -> Snapshot:
    return library_files(home), db_rows(home, "packages"), db_rows(home, "chunks")


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_refused(home: Path, *args: str, names: tuple[str, ...]) -> str:
    """Run a command that must be refused and must leave the site exactly as it was."""
    before = snapshot(home)
    proc = run_packdist(home, *args, check=False)
    line = assert_one_line_error(proc, *names)
    assert proc.stdout == ""
    assert snapshot(home) == before, "a refused command changed the site"
    return line


def show_json(home: Path, ref: str) -> dict[str, Any]:
    proc = run_packdist(home, "package", "show", ref, "--json")
    doc: dict[str, Any] = json.loads(proc.stdout)  # exactly one document
    return doc


def entries_by_path(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in doc["manifest"]["entries"]}


def make_tree(root: Path, seed: int = 0) -> Path:
    """A small tree with every kind of entry a package may hold."""
    rng = random.Random(seed)
    (root / "bin").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "empty" / "nested-empty").mkdir(parents=True)
    (root / "README").write_bytes(b"hello packdist\n")
    run = root / "bin" / "run"
    run.write_bytes(b"#!/bin/sh\necho run\n")
    run.chmod(0o755)
    (root / "data" / "blob.bin").write_bytes(rng.randbytes(700_000))
    (root / "data" / "zero").write_bytes(b"")
    os.symlink("bin/run", root / "link")
    os.symlink("../README", root / "data" / "up")
    return root


def interrupt_import(
    home: Path, tree: Path, sig: signal.Signals
) -> subprocess.CompletedProcess[str]:
    """Start a large import and send ``sig`` once it has begun writing chunks."""
    before = library_names(home)
    args = ["package", "create", str(tree), "--name", "big", "--version", "1"]
    proc = subprocess.Popen(
        [*PACKDIST, "--home", str(home), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C must raise KeyboardInterrupt in the child even if our own SIGINT is ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"import ended before it could be interrupted: {err}")
            written = library_names(home) - before
            if len(written) >= 8:  # some chunks (or their temporaries) are on disk
                break
            if time.monotonic() - started > 60:
                pytest.fail("import wrote no chunk within 60 s")
            time.sleep(0.005)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --- fixtures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shared:
    home: Path
    base: Path  # the tree base@1 was imported from
    created: dict[str, Any]  # what 'package create --json' printed


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    """A site holding ``base@1``. Tests may read it; refusal tests check they changed nothing."""
    top = tmp_path_factory.mktemp("shared")
    home = top / "site"
    run_packdist(home, "site", "init", "--name", "shared")
    base = make_tree(top / "base", seed=1)
    proc = run_packdist(
        home, "package", "create", str(base), "--name", "base", "--version", "1", "--json"
    )
    return Shared(home, base, json.loads(proc.stdout))


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    """A tree full of good content (so a late refusal would have written chunks)."""
    root = make_tree(tmp_path / "bad", seed=2)
    (root / "zz" / "deeper").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 300 MB of random data: long enough an import to interrupt part way."""
    root = tmp_path_factory.mktemp("big") / "tree"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        with open(root / "sub" / f"blob{i}.bin", "wb") as f:
            for _ in range(10):
                f.write(os.urandom(10 * 1024 * 1024))
    (root / "small.txt").write_bytes(b"small\n")
    return root


# --- what an import records ---------------------------------------------------------------


def test_create_records_bytes_modes_mtimes_dirs_and_symlinks(shared: Shared) -> None:
    tree, created = shared.base, shared.created
    assert created["created"] is True
    assert created["ref"] == "base@1"
    assert created["files"] == 4
    assert created["size"] == sum(
        (tree / p).stat().st_size for p in ("README", "bin/run", "data/blob.bin", "data/zero")
    )

    doc = show_json(shared.home, "base@1")
    assert doc["id"] == created["id"]
    entries = entries_by_path(doc)
    assert set(entries) == {
        "README",
        "bin",
        "bin/run",
        "data",
        "data/blob.bin",
        "data/up",
        "data/zero",
        "empty",
        "empty/nested-empty",
        "link",
    }
    assert entries["empty"] == {"path": "empty", "type": "dir"}
    assert entries["empty/nested-empty"] == {"path": "empty/nested-empty", "type": "dir"}
    assert entries["bin/run"]["executable"] is True
    assert entries["README"]["executable"] is False
    assert entries["data/blob.bin"]["executable"] is False
    assert entries["link"] == {"path": "link", "type": "symlink", "target": "bin/run"}
    assert entries["data/up"] == {"path": "data/up", "type": "symlink", "target": "../README"}
    assert entries["data/zero"]["size"] == 0
    assert entries["data/zero"]["chunks"] == []
    assert len(entries["data/blob.bin"]["chunks"]) > 1  # 700 kB: cut into several chunks

    # Every file's bytes can be rebuilt from the library, and its mtime was recorded.
    library = shared.home / "library"
    for path, entry in entries.items():
        if entry["type"] != "file":
            continue
        parts = [(library / d[:2] / d).read_bytes() for d, _ in entry["chunks"]]
        assert b"".join(parts) == (tree / path).read_bytes(), path
        assert [s for _, s in entry["chunks"]] == [len(p) for p in parts]
        assert entry["size"] == sum(len(p) for p in parts)
        assert entry["mtime_ns"] == (tree / path).stat().st_mtime_ns


def test_package_id_is_the_digest_of_the_signed_canonical_manifest(shared: Shared) -> None:
    home = shared.home
    doc = show_json(home, "base@1")
    canonical = json.dumps(
        doc["manifest"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert blake3.blake3(canonical).hexdigest() == doc["id"]

    rows = [(r[0], r[1], r[2], bytes(r[3]), bytes(r[4])) for r in db_rows(home, "packages")]
    assert len(rows) == 1
    ((pkg_id, name, version, manifest, signature),) = rows
    assert (pkg_id, name, version) == (doc["id"], "base", "1")
    assert manifest == canonical  # stored in canonical form
    SigningKey.load(home / "site.key").public.verify(signature, manifest)

    # The chunks table holds exactly the chunk files, each stored under its own digest.
    stored = {bytes(r[0]).hex(): r[1] for r in db_rows(home, "chunks")}
    assert set(stored) == chunk_files(home)
    assert set(stored) == {d for e in doc["manifest"]["entries"] for d, _ in e.get("chunks", [])}
    for digest, size in stored.items():
        data = (home / "library" / digest[:2] / digest).read_bytes()
        assert blake3.blake3(data).hexdigest() == digest
        assert len(data) == size


def test_list_and_show_outputs(shared: Shared) -> None:
    listed = run_packdist(shared.home, "package", "list", "--json")
    assert listed.stderr == ""
    doc = json.loads(listed.stdout)  # exactly one document
    assert [p["ref"] for p in doc["packages"]] == ["base@1"]
    (pkg,) = doc["packages"]
    assert pkg["id"] == shared.created["id"]
    assert (pkg["files"], pkg["size"]) == (shared.created["files"], shared.created["size"])

    human = run_packdist(shared.home, "package", "list")
    assert "base@1" in human.stdout

    show = run_packdist(shared.home, "package", "show", "base@1")
    assert show.stdout.startswith(f"base@1  id {pkg['id']}")
    for line in ("bin/run", "empty/", "link -> bin/run", "data/up -> ../README"):
        assert line in show.stdout


def test_show_and_verify_refuse_unknown_or_malformed_refs(shared: Shared) -> None:
    home = shared.home
    assert_refused(home, "package", "show", "nope@1", names=("nope@1",))
    assert_refused(home, "package", "verify", "base@9", names=("base@9",))
    assert_refused(home, "package", "show", "base", names=("base",))
    assert_refused(home, "package", "show", "base@1/..", names=("1/..",))


# --- refusals: nothing stored -------------------------------------------------------------


def _create(home: Path, tree: Path, *names: str, version: str = "9") -> str:
    return assert_refused(
        home, "package", "create", str(tree), "--name", "bad", "--version", version, names=names
    )


@pytest.mark.parametrize(
    ("where", "target"),
    [("zz/escape", "../../../outside"), ("zz/deeper/up", "../../.."), ("top", "../x")],
)
def test_create_refuses_a_symlink_escaping_the_tree(
    shared: Shared, bad_tree: Path, where: str, target: str
) -> None:
    os.symlink(target, bad_tree / where)
    _create(shared.home, bad_tree, str(bad_tree / where), "escapes")


def test_create_refuses_an_absolute_symlink(shared: Shared, bad_tree: Path) -> None:
    os.symlink(bad_tree / "README", bad_tree / "zz" / "abs")  # absolute, even pointing inside
    _create(shared.home, bad_tree, str(bad_tree / "zz" / "abs"), "absolute")


def test_create_refuses_a_device_file(shared: Shared, bad_tree: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node with os.mknod needs root")
    dev = bad_tree / "zz" / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError as exc:
        pytest.skip(f"os.mknod refused even as root (no CAP_MKNOD): {exc}")
    _create(shared.home, bad_tree, str(dev), "device")


def test_create_refuses_a_socket(shared: Shared, bad_tree: Path) -> None:
    path = bad_tree / "zz" / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.bind(str(path))
        except OSError as exc:
            pytest.skip(f"cannot bind a unix socket at {path}: {exc}")
        _create(shared.home, bad_tree, str(path), "socket")


def test_create_refuses_a_fifo(shared: Shared, bad_tree: Path) -> None:
    fifo = bad_tree / "zz" / "deeper" / "fifo"
    os.mkfifo(fifo)
    _create(shared.home, bad_tree, str(fifo), "FIFO")


def test_create_refuses_a_name_that_is_not_utf8(shared: Shared, bad_tree: Path) -> None:
    with open(os.fsencode(bad_tree / "zz") + b"/\xff\xfe.txt", "wb") as f:
        f.write(b"not utf-8 named")
    _create(shared.home, bad_tree, str(bad_tree / "zz") + "/\\xff\\xfe.txt", "UTF-8")


def test_create_refuses_a_missing_directory(shared: Shared, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    _create(shared.home, missing, str(missing))


def test_create_refuses_an_empty_directory(shared: Shared, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _create(shared.home, empty, str(empty), "empty")


def test_create_refuses_a_file_instead_of_a_directory(shared: Shared, tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_bytes(b"x")
    _create(shared.home, f, str(f), "not a directory")


@pytest.mark.parametrize(
    ("name", "version", "named"),
    [
        pytest.param("a/b", "1", "a/b", id="name-slash"),
        pytest.param("..", "1", "..", id="name-dotdot"),
        pytest.param("-rf", "1", "-rf", id="name-dash"),
        pytest.param("x" * 129, "1", "x" * 40, id="name-too-long"),
        pytest.param("", "1", "package name", id="name-empty"),
        pytest.param("app", "1/0", "1/0", id="version-slash"),
        pytest.param("app", "..", "..", id="version-dotdot"),
        pytest.param("app", "9" * 200, "9" * 40, id="version-too-long"),
        pytest.param("app", "1.0\n", "'1.0\\n'", id="version-trailing-newline"),
        pytest.param("app\n", "1.0", "'app\\n'", id="name-trailing-newline"),
    ],
)
def test_create_refuses_invalid_names_and_versions(
    shared: Shared, name: str, version: str, named: str
) -> None:
    home, base = shared.home, shared.base
    assert_refused(
        home, "package", "create", str(base), "--name", name, "--version", version, names=(named,)
    )


def _retarget(link: Path, target: str) -> None:
    link.unlink()
    os.symlink(target, link)


def _copy(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, symlinks=True)
    return dest


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda t: (t / "README").write_bytes(b"other bytes\n"), id="file-content"),
        pytest.param(lambda t: (t / "README").chmod(0o755), id="executable-bit"),
        pytest.param(lambda t: (t / "empty" / "new-dir").mkdir(), id="new-empty-dir"),
        pytest.param(lambda t: (t / "data" / "zero").unlink(), id="file-removed"),
        pytest.param(lambda t: _retarget(t / "link", "README"), id="link-target"),
    ],
)
def test_create_refuses_an_existing_version_with_other_content(
    shared: Shared, tmp_path: Path, change: Any
) -> None:
    home, base = shared.home, shared.base
    tree = _copy(base, tmp_path / "changed")
    change(tree)
    assert_refused(
        home,
        "package",
        "create",
        str(tree),
        "--name",
        "base",
        "--version",
        "1",
        names=("base@1",),
    )


def test_same_content_again_is_a_no_op_success(shared: Shared, tmp_path: Path) -> None:
    home, base = shared.home, shared.base
    tree = _copy(base, tmp_path / "again")
    for dirpath, _dirs, names in os.walk(tree):
        for n in names:
            os.utime(Path(dirpath) / n, ns=(1, 1), follow_symlinks=False)  # new mtimes only
    before = snapshot(home)
    proc = run_packdist(
        home, "package", "create", str(tree), "--name", "base", "--version", "1", "--json"
    )
    doc = json.loads(proc.stdout)
    assert doc["created"] is False
    assert doc["ref"] == "base@1"
    assert snapshot(home) == before


# --- content library: stored once ---------------------------------------------------------


def test_identical_chunks_are_stored_once_across_files_versions_and_packages(
    site_home: Path, tmp_path: Path
) -> None:
    blob = os.urandom(3 * 1024 * 1024)
    v1 = tmp_path / "v1"
    (v1 / "copy").mkdir(parents=True)
    (v1 / "a.bin").write_bytes(blob)
    (v1 / "copy" / "b.bin").write_bytes(blob)  # same bytes under another name
    (v1 / "small.txt").write_bytes(b"small\n")

    run_packdist(site_home, "package", "create", str(v1), "--name", "app", "--version", "1")
    after_v1 = chunk_files(site_home)
    entries = entries_by_path(show_json(site_home, "app@1"))
    a_chunks = [d for d, _ in entries["a.bin"]["chunks"]]
    assert a_chunks == [d for d, _ in entries["copy/b.bin"]["chunks"]]
    assert after_v1 == set(a_chunks) | {d for d, _ in entries["small.txt"]["chunks"]}
    assert len(after_v1) == len(set(a_chunks)) + 1
    assert len(after_v1) == len(db_rows(site_home, "chunks"))
    for digest in after_v1:  # sharded by the first two hex digits
        assert (site_home / "library" / digest[:2] / digest).is_file()

    # Version 2: a 100-byte edit in the middle of one copy.
    v2 = _copy(v1, tmp_path / "v2")
    edited = bytearray(blob)
    mid = len(blob) // 2
    edited[mid : mid + 100] = os.urandom(100)
    (v2 / "a.bin").write_bytes(bytes(edited))
    run_packdist(site_home, "package", "create", str(v2), "--name", "app", "--version", "2")
    new = chunk_files(site_home) - after_v1
    assert 1 <= len(new) <= 3, f"{len(new)} new chunk files for a 100-byte edit"
    assert chunk_files(site_home) >= after_v1  # nothing of v1 was rewritten away

    # Another package with content already in the library adds no chunk file at all.
    before = library_files(site_home)
    proc = run_packdist(
        site_home, "package", "create", str(v1), "--name", "other", "--version", "1", "--json"
    )
    assert json.loads(proc.stdout)["created"] is True
    assert library_files(site_home) == before
    assert len(db_rows(site_home, "packages")) == 3


# --- verify -------------------------------------------------------------------------------


def test_verify_reports_corrupt_and_missing_chunks(site_home: Path, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    run_packdist(site_home, "package", "create", str(tree), "--name", "app", "--version", "1")
    ok = run_packdist(site_home, "package", "verify", "app@1")
    assert "verified" in ok.stdout

    entries = entries_by_path(show_json(site_home, "app@1"))
    library = site_home / "library"
    corrupt = entries["data/blob.bin"]["chunks"][1][0]
    missing = entries["bin/run"]["chunks"][0][0]

    # One byte flipped in a chunk of data/blob.bin; the only chunk of bin/run deleted.
    data = bytearray((library / corrupt[:2] / corrupt).read_bytes())
    data[len(data) // 2] ^= 0x01
    (library / corrupt[:2] / corrupt).write_bytes(bytes(data))
    (library / missing[:2] / missing).unlink()

    proc = run_packdist(site_home, "package", "verify", "app@1", check=False)
    assert_one_line_error(proc, "app@1")
    out = proc.stdout
    corrupt_line = next(line for line in out.splitlines() if corrupt[:12] in line)
    assert "corrupt" in corrupt_line
    missing_line = next(line for line in out.splitlines() if missing[:12] in line)
    assert "missing" in missing_line
    assert "data/blob.bin" in out
    assert "bin/run" in out
    assert "README" not in out  # only the affected files are named

    as_json = run_packdist(site_home, "package", "verify", "app@1", "--json", check=False)
    assert as_json.returncode != 0
    report = json.loads(as_json.stdout)  # exactly one document, even on failure
    assert report["ok"] is False
    problems = {p["chunk"]: p["problem"] for p in report["problems"]}
    assert set(problems) == {corrupt, missing}
    assert "corrupt" in problems[corrupt]
    assert problems[missing] == "missing"
    assert report["affected_files"] == ["bin/run", "data/blob.bin"]


def test_verify_json_of_a_sound_package(shared: Shared) -> None:
    home = shared.home
    proc = run_packdist(home, "package", "verify", "base@1", "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert report["problems"] == []
    assert report["package"] == "base@1"
    assert report["chunks"] >= 1


# --- interrupted imports ------------------------------------------------------------------


def test_import_interrupted_by_ctrl_c_leaves_no_package_and_no_new_chunks(
    site_home: Path, big_tree: Path
) -> None:
    before = snapshot(site_home)
    proc = interrupt_import(site_home, big_tree, signal.SIGINT)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "interrupted" in proc.stderr
    assert proc.stdout == ""
    assert snapshot(site_home) == before  # no chunk files, no temporaries, no rows

    listed = json.loads(run_packdist(site_home, "package", "list", "--json").stdout)
    assert listed["packages"] == []


def test_import_killed_part_way_leaves_no_package_and_a_fresh_import_succeeds(
    site_home: Path, big_tree: Path
) -> None:
    before = snapshot(site_home)
    proc = interrupt_import(site_home, big_tree, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    _, packages, chunks = snapshot(site_home)
    assert (packages, chunks) == (before[1], before[2])  # nothing recorded
    listed = json.loads(run_packdist(site_home, "package", "list", "--json").stdout)
    assert listed["packages"] == []

    # Files a killed import left behind do not stop a fresh import, and verify passes.
    created = run_packdist(
        site_home, "package", "create", str(big_tree), "--name", "big", "--version", "1", "--json"
    )
    assert json.loads(created.stdout)["created"] is True
    run_packdist(site_home, "package", "verify", "big@1")
    listed = json.loads(run_packdist(site_home, "package", "list", "--json").stdout)
    assert [p["ref"] for p in listed["packages"]] == ["big@1"]


# --- symlinks followed through other symlinks ---------------------------------------------


def test_create_refuses_a_symlink_escaping_through_another_symlink(
    shared: Shared, bad_tree: Path
) -> None:
    # x points at the tree's root, harmless; y stays inside as text, but the kernel follows
    # x first and climbs out of the tree from there.
    (bad_tree / "d" / "e").mkdir(parents=True)
    os.symlink("../..", bad_tree / "d" / "e" / "x")
    os.symlink("x/../../..", bad_tree / "d" / "e" / "y")
    line = _create(shared.home, bad_tree, str(bad_tree / "d" / "e" / "y"), "escapes")
    assert line.startswith(f"packdist: {bad_tree / 'd' / 'e' / 'y'}: ")  # y named, not x


# --- command-line robustness --------------------------------------------------------------


def test_an_os_error_is_one_line_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")
    home = blocker / "site"
    proc = run_packdist(home, "site", "init", check=False)
    assert proc.returncode == 1
    line = assert_one_line_error(proc, "Not a directory", str(home))
    assert line == f"packdist: Not a directory: {home}"
    assert proc.stdout == ""
    assert blocker.read_bytes() == b"not a directory"


def test_distribute_refuses_timeout_without_wait_and_makes_no_job(site_home: Path) -> None:
    before = snapshot(site_home)
    proc = run_packdist(site_home, "distribute", "app@1", "--all", "--timeout", "5", check=False)
    assert_one_line_error(proc, "--timeout needs --wait")
    assert proc.stdout == ""
    assert snapshot(site_home) == before
    jobs = json.loads(run_packdist(site_home, "job", "list", "--json").stdout)
    assert jobs["jobs"] == []
