"""Trees deeper than Python's recursion limit or longer than PATH_MAX: walked, measured and
deleted without recursion; refused with one clear line where an agent could not hold them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from packdist.core.fsutil import remove_tree, tree_bytes, walk_tree
from packdist.core.manifest import MAX_PATH_BYTES, ManifestError, check_relative_path
from packdist.errors import TreeRefused
from packdist.site.walker import walk

NAME = "d" * 20


@pytest.fixture(autouse=True)
def _clear_deep_trees(tmp_path: Path) -> Iterator[None]:
    """Delete what a test left, passed or failed: pytest's own clean-up of old temporary
    folders (shutil.rmtree) would exhaust the stack on these trees in a later run."""
    yield
    for child in tmp_path.iterdir():
        remove_tree(child)


def _deep_by_fd(root: Path, depth: int, name: str = NAME) -> None:
    """``depth`` nested directories, each holding a file and a symlink, made through
    directory descriptors (the full path is far over PATH_MAX)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                f.write(b"x" * 100)
            os.symlink("f", "link", dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def test_a_tree_longer_than_path_max_is_walked_measured_and_deleted(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    _deep_by_fd(root, 2500)  # 2,500 levels of 21 bytes: 52 KB of path
    rels = [rel for _fd, rel, _entries in walk_tree(root)]
    assert len(rels) == 2501 and rels[0] == "" and rels[-1].count("/") == 2499
    assert tree_bytes(root) >= 2500 * 512
    remove_tree(root)
    assert not os.path.lexists(root)


def test_remove_tree_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "out").symlink_to(outside)
    (tree / "top").symlink_to(outside)
    remove_tree(tree)
    remove_tree(tmp_path / "never-there")  # missing: nothing to do
    assert not tree.exists() and (outside / "keep.txt").read_text() == "keep"


def test_the_site_walks_a_source_tree_1200_deep(tmp_path: Path) -> None:
    folder = root = tmp_path / "src"
    root.mkdir()
    for _ in range(1200):
        folder = folder / "d"
        folder.mkdir()
    (folder / "bottom.txt").write_text("bottom")
    entries = walk(root)
    assert len(entries) == 1201 and entries[-1].path.endswith("d/bottom.txt")


def test_the_site_refuses_a_path_longer_than_an_agent_may_hold(tmp_path: Path) -> None:
    root = tmp_path / "src"
    _deep_by_fd(root, MAX_PATH_BYTES // (len(NAME) + 1) + 1)
    with pytest.raises(TreeRefused, match=f"at most {MAX_PATH_BYTES}") as caught:
        walk(root)
    assert len(caught.value.message) < 300 and "\n" not in caught.value.message
    remove_tree(root)


def test_a_manifest_path_longer_than_an_agent_may_hold_is_refused() -> None:
    ok = "/".join(["d"] * (MAX_PATH_BYTES // 2))
    assert check_relative_path(ok) == ok
    with pytest.raises(ManifestError, match="longer than"):
        check_relative_path(ok + "/xx")


def _deep_plain(root: Path, depth: int) -> None:
    root.mkdir()
    folder = root
    for _ in range(depth):  # one level at a time: pathlib's parents=True recurses
        folder = folder / "d"
        folder.mkdir()
    (folder / "bottom").write_bytes(b"x" * 5000)


def test_an_agent_starts_over_deep_leftovers_of_a_crash_and_drops_them(tmp_path: Path) -> None:
    """A deletion, a layout and an abandoned staging tree interrupted by a crash, each 1,200
    directories deep: start-up (prepare, recover, trim) clears them and the agent runs."""
    from packdist.agent.home import TRASH_PREFIX, AgentHome
    from packdist.agent.installer import Installer

    home = AgentHome(tmp_path / "agent", cache_limit=0)
    home.prepare()
    trash = home.cache / f"{TRASH_PREFIX}x"
    layout = home.staging / f"{'ab' * 32}.layout-1234"
    cached = home.cache / ("cd" * 32)
    for tree in (trash, layout, cached):
        _deep_plain(tree, 1200)

    async def nothing(*_args: object) -> None:  # no fetch happens at start-up
        raise AssertionError("nothing is fetched at start-up")

    home.prepare()
    installer = Installer(home, nothing)  # type: ignore[arg-type]
    installer.recover()
    installer.trim_cache()
    assert not any(os.path.lexists(t) for t in (trash, layout, cached))
