"""The source-tree walker: what it records, and every kind of entry it refuses."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from packdist.core.manifest import EntryType
from packdist.errors import TreeRefused, UserError
from packdist.site.walker import SourceEntry, walk


def _by_path(entries: list[SourceEntry]) -> dict[str, SourceEntry]:
    return {e.path: e for e in entries}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tree with every kind of entry the walker accepts."""
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "deep" / "er" / "est").mkdir(parents=True)
    (root / "README").write_bytes(b"read me\n")
    (root / "zero").write_bytes(b"")
    run = root / "bin" / "run"
    run.write_bytes(b"#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    (root / "deep" / "er" / "est" / "leaf.txt").write_bytes(b"leaf")
    (root / "naïve €.txt").write_bytes(b"unicode")
    os.symlink("README", root / "link-same-dir")
    os.symlink("../README", root / "bin" / "readme")
    os.symlink("../../..", root / "deep" / "er" / "est" / "to-root")
    os.symlink("bin", root / "link-to-dir")
    os.symlink("missing-but-inside", root / "dangling")
    os.symlink(".", root / "self")
    return root


def test_records_every_entry_with_relative_slash_paths(tree: Path) -> None:
    entries = walk(tree)
    assert sorted(e.path for e in entries) == sorted(
        [
            "README",
            "bin",
            "bin/readme",
            "bin/run",
            "dangling",
            "deep",
            "deep/er",
            "deep/er/est",
            "deep/er/est/leaf.txt",
            "deep/er/est/to-root",
            "empty",
            "link-same-dir",
            "link-to-dir",
            "naïve €.txt",
            "self",
            "zero",
        ]
    )
    for e in entries:
        assert e.abspath == tree / e.path


def test_records_types(tree: Path) -> None:
    got = {e.path: e.type for e in walk(tree)}
    assert got["bin"] is EntryType.DIR
    assert got["empty"] is EntryType.DIR  # empty directories are entries too
    assert got["deep/er/est"] is EntryType.DIR
    assert got["README"] is EntryType.FILE
    assert got["zero"] is EntryType.FILE
    for link in ("link-same-dir", "bin/readme", "deep/er/est/to-root", "link-to-dir", "self"):
        assert got[link] is EntryType.SYMLINK


def test_records_file_size_executable_bit_and_mtime(tree: Path) -> None:
    os.utime(tree / "README", ns=(1_000_000_000, 1_234_567_890_123_456_789))
    (tree / "bin" / "group-exec").write_bytes(b"x")
    (tree / "bin" / "group-exec").chmod(0o654)  # executable for group only, not the owner
    got = _by_path(walk(tree))
    readme = got["README"]
    assert readme.size == len(b"read me\n")
    assert readme.mtime_ns == 1_234_567_890_123_456_789
    assert readme.executable is False
    assert got["bin/run"].executable is True
    assert got["bin/run"].size == len(b"#!/bin/sh\necho hi\n")
    assert got["bin/run"].mtime_ns == (tree / "bin" / "run").stat().st_mtime_ns
    assert got["zero"].size == 0
    assert got["bin/group-exec"].executable is False


def test_records_symlink_targets_verbatim_and_does_not_follow_them(tree: Path) -> None:
    got = _by_path(walk(tree))
    assert got["link-same-dir"].target == "README"
    assert got["bin/readme"].target == "../README"
    assert got["deep/er/est/to-root"].target == "../../.."
    assert got["link-to-dir"].target == "bin"
    assert got["dangling"].target == "missing-but-inside"
    assert not any(p.startswith("link-to-dir/") for p in got)  # not followed into
    assert not any(p.startswith("self/") for p in got)


def test_parents_come_before_children(tree: Path) -> None:
    seen: set[str] = set()
    for e in walk(tree):
        parent = e.path.rpartition("/")[0]
        assert not parent or parent in seen, f"{e.path} before its parent"
        seen.add(e.path)


def test_root_itself_is_not_an_entry(tree: Path) -> None:
    assert all(e.path and not e.path.startswith("/") for e in walk(tree))


def test_a_single_empty_subdirectory_is_enough(tmp_path: Path) -> None:
    (tmp_path / "only-empty").mkdir()
    entries = walk(tmp_path)
    assert [(e.path, e.type) for e in entries] == [("only-empty", EntryType.DIR)]


# --- refusals -----------------------------------------------------------------------------


def _refused(root: Path, *needles: str) -> str:
    with pytest.raises(TreeRefused) as info:
        walk(root)
    message = info.value.message
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_tree_refused_is_a_user_error() -> None:
    assert issubclass(TreeRefused, UserError)


@pytest.mark.parametrize(
    ("where", "target"),
    [
        ("out", ".."),
        ("out", "../sibling"),
        ("sub/out", "../../x"),
        ("sub/out", "inner/../../../x"),
        ("sub/deeper/out", "../../../etc/passwd"),
    ],
)
def test_refuses_symlinks_that_escape_the_tree(tree: Path, where: str, target: str) -> None:
    link = tree / where
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    _refused(tree, str(link), "escapes", target)


@pytest.mark.parametrize("target", ["/etc/passwd", "/", "/tmp"])
def test_refuses_absolute_symlinks(tree: Path, target: str) -> None:
    link = tree / "deep" / "abs"
    os.symlink(target, link)
    _refused(tree, str(link), "absolute", target)


def test_refuses_an_absolute_symlink_even_into_the_tree_itself(tree: Path) -> None:
    link = tree / "abs-inside"
    os.symlink(tree / "README", link)
    _refused(tree, str(link), "absolute")


def test_refuses_a_device_file(tree: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node with os.mknod needs root")
    dev = tree / "deep" / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError as exc:  # root without CAP_MKNOD (some containers)
        pytest.skip(f"os.mknod refused even as root: {exc}")
    _refused(tree, str(dev), "device file")


def test_refuses_a_block_device(tree: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node with os.mknod needs root")
    dev = tree / "blk"
    try:
        os.mknod(dev, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except PermissionError as exc:
        pytest.skip(f"os.mknod refused even as root: {exc}")
    _refused(tree, str(dev), "device file")


def test_refuses_a_socket(tree: Path) -> None:
    path = tree / "bin" / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    try:
        try:
            sock.bind(str(path))
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            pytest.skip(f"socket path too long for AF_UNIX: {path}")
        _refused(tree, str(path), "socket")
    finally:
        sock.close()


def test_refuses_a_fifo(tree: Path) -> None:
    fifo = tree / "deep" / "er" / "pipe"
    os.mkfifo(fifo)
    _refused(tree, str(fifo), "FIFO")


def test_refuses_a_file_name_that_is_not_utf8(tree: Path) -> None:
    bad = os.fsencode(tree / "deep") + b"/\xff\xfe.txt"
    with open(bad, "wb") as f:
        f.write(b"x")
    message = _refused(tree, str(tree / "deep"), "not valid UTF-8")
    assert "\\xff\\xfe.txt" in message  # the bytes shown as a reader would type them
    message.encode("utf-8")  # the message itself prints anywhere


def test_refuses_a_directory_name_that_is_not_utf8(tree: Path) -> None:
    bad = os.fsencode(tree) + b"/caf\xe9"
    os.mkdir(bad)
    with open(bad + b"/inside.txt", "wb") as f:
        f.write(b"x")
    message = _refused(tree, str(tree), "not valid UTF-8")
    assert "caf\\xe9" in message


def test_refuses_a_symlink_target_that_is_not_utf8(tree: Path) -> None:
    link = tree / "weird-link"
    os.symlink(b"\xff\xfe", os.fsencode(link))
    _refused(tree, str(link), "not valid UTF-8")


def test_refuses_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    _refused(missing, str(missing), "no such directory")


def test_refuses_an_empty_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(empty, str(empty), "empty")


def test_refuses_a_file_given_as_the_root(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_bytes(b"x")
    _refused(f, str(f), "not a directory")


def test_refuses_a_symlink_given_as_the_root(tree: Path, tmp_path: Path) -> None:
    """The root is taken as given (lstat): a link to a tree is not silently followed."""
    link = tmp_path / "link-to-tree"
    os.symlink(tree, link)
    _refused(link, str(link), "not a directory")


def test_a_refusal_deep_in_the_tree_is_found_after_good_entries(tree: Path) -> None:
    """Refusals are not limited to the first level: the whole tree is checked."""
    deepest = tree / "deep" / "er" / "est" / "more" / "fifo"
    deepest.parent.mkdir()
    os.mkfifo(deepest)
    _refused(tree, str(deepest), "FIFO")
