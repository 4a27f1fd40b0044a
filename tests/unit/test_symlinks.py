"""Symlinks followed through the package's own symlinks, the way the kernel follows them.

A target that stays inside as text can still lead out once another link on its way is
followed: ``d/e/x -> ../..`` points at the package root, so ``d/e/y -> x/../../..`` climbs
two levels above it. The manifest parser and the source walker both refuse such a link,
naming it; chains that stay inside and loops (which the kernel refuses to follow) are kept.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packdist.core.chunking import DEFAULT_PARAMS
from packdist.core.manifest import (
    MAX_SYMLINK_HOPS,
    Entry,
    EntryType,
    Manifest,
    ManifestError,
    SymlinkEscape,
    check_symlinks,
    resolve_symlink,
    symlink_stays_inside,
)
from packdist.errors import TreeRefused
from packdist.site.walker import walk

DIRS = ["d", "d/e", "f"]


def _manifest(links: dict[str, str], dirs: list[str] = DIRS) -> Manifest:
    entries = [Entry(d, EntryType.DIR) for d in dirs]
    entries += [Entry(p, EntryType.SYMLINK, target=t) for p, t in links.items()]
    return Manifest.build("app", "1", entries, DEFAULT_PARAMS)


# --- resolving ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("links", "link", "resolved"),
    [
        pytest.param({"a": "d/e"}, "a", "d/e", id="plain"),
        pytest.param({"d/e/x": "../.."}, "d/e/x", "", id="to-root"),
        pytest.param({"d/e/x": "../..", "d/e/z": "x/f"}, "d/e/z", "f", id="through-root-link"),
        pytest.param({"self": ".", "up": "self/d/e"}, "up", "d/e", id="through-self"),
        pytest.param({"lnk": "d", "f/w": "../lnk/e"}, "f/w", "d/e", id="through-dir-link"),
        pytest.param({"d/e/x": "../..", "d/e/y": "x/d/e/.."}, "d/e/y", "d", id="climb-after"),
        pytest.param({"a": "b", "b": "c", "c": "d"}, "a", "d", id="chain"),
        pytest.param({"d/gone": "../missing/thing"}, "d/gone", "missing/thing", id="dangling"),
    ],
)
def test_chains_that_stay_inside_resolve(links: dict[str, str], link: str, resolved: str) -> None:
    assert resolve_symlink(link, links) == resolved
    check_symlinks(links)
    assert {e.path for e in _manifest(links).entries} >= set(links)  # parsed and accepted


@pytest.mark.parametrize(
    ("links", "bad", "via"),
    [
        pytest.param({"d/e/x": "../..", "d/e/y": "x/../../.."}, "d/e/y", "d/e/x", id="example"),
        pytest.param({"self": ".", "out": "self/.."}, "out", "self", id="self-then-up"),
        pytest.param({"f/r": "..", "f/s": "r/.."}, "f/s", "f/r", id="sibling-to-root"),
        pytest.param({"f/r": "..", "d/e/w": "../../f/r/.."}, "d/e/w", "f/r", id="across"),
        pytest.param(
            {"d/l2": "..", "d/l1": "l2/d", "f/z": "../d/l1/../.."}, "f/z", "d/l2", id="chain"
        ),
    ],
)
def test_chains_that_climb_out_are_refused(links: dict[str, str], bad: str, via: str) -> None:
    # Every link here stays inside as text: only following the others shows the escape.
    assert all(symlink_stays_inside(p, t) for p, t in links.items())
    with pytest.raises(SymlinkEscape, match="escapes the package") as caught:
        resolve_symlink(bad, links)
    assert via in caught.value.message
    with pytest.raises(ManifestError) as refused:
        _manifest(links)
    assert repr(bad) in refused.value.message  # the link is named
    assert "escapes the package" in refused.value.message


def test_an_absolute_target_met_on_the_way_is_refused() -> None:
    with pytest.raises(SymlinkEscape, match="absolute"):
        resolve_symlink("a", {"a": "b/c", "b": "/etc"})


@pytest.mark.parametrize(
    "links",
    [
        pytest.param({"a": "a"}, id="self"),
        pytest.param({"a": "b", "b": "a"}, id="pair"),
        pytest.param({"a": "a/.."}, id="grows"),
        pytest.param({"d/l": "../d/l/../.."}, id="grows-with-climbs"),
    ],
)
def test_loops_are_kept(links: dict[str, str]) -> None:
    """The kernel gives up on a loop (ELOOP) before it could lead anywhere: nothing escapes."""
    for link in links:
        assert resolve_symlink(link, links) is None
    _manifest(links)  # accepted


def _chain(n: int, last: str) -> dict[str, str]:
    """``l01 -> l02 -> ... -> lNN -> last``: n links at the root."""
    links = {f"l{i:02}": f"l{i + 1:02}" for i in range(1, n)}
    links[f"l{n:02}"] = last
    return links


def test_the_walk_follows_as_many_links_as_the_kernel(tmp_path: Path) -> None:
    at_limit, beyond = _chain(MAX_SYMLINK_HOPS, "d"), _chain(MAX_SYMLINK_HOPS + 1, "d")
    assert resolve_symlink("l01", at_limit) == "d"
    assert resolve_symlink("l01", beyond) is None
    with pytest.raises(SymlinkEscape):
        resolve_symlink("l01", _chain(MAX_SYMLINK_HOPS, ".."))
    # the same limit as the kernel's: it follows the first chain and gives up on the second
    a = _tree(tmp_path / "a", at_limit)
    assert os.stat(a / "l01").st_ino == os.stat(a / "d").st_ino
    b = _tree(tmp_path / "b", beyond)
    with pytest.raises(OSError) as eloop:
        os.stat(b / "l01")
    assert eloop.value.errno == errno.ELOOP


def test_the_first_escaping_link_in_path_order_is_named() -> None:
    links = {"d/e/x": "../..", "d/e/y": "x/../../..", "f/z": "../d/e/y"}
    with pytest.raises(SymlinkEscape) as caught:
        check_symlinks(links)
    assert caught.value.message.startswith("symlink 'd/e/y' -> 'x/../../..' escapes")


# --- the walker ---------------------------------------------------------------------------


def _tree(root: Path, links: dict[str, str]) -> Path:
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "README").write_bytes(b"inside\n")
    for path, target in links.items():
        os.symlink(target, root / path)
    return root


def test_walker_refuses_a_link_that_escapes_through_another(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree", {"d/e/x": "../..", "d/e/y": "x/../../.."})
    # the kernel agrees: x is the tree's root, so y climbs three levels from there
    assert os.stat(root / "d" / "e" / "y").st_ino == os.stat(tmp_path.parent.parent).st_ino
    with pytest.raises(TreeRefused) as refused:
        walk(root)
    message = refused.value.message
    assert message.startswith(f"{root / 'd' / 'e' / 'y'}: symlink target 'x/../../..' escapes")
    assert "\n" not in message


def test_walker_keeps_chains_that_stay_inside_and_loops(tmp_path: Path) -> None:
    links = {"d/e/x": "../..", "d/e/z": "x/f", "self": ".", "up": "self/d", "loop": "loop"}
    root = _tree(tmp_path / "tree", links)
    got = {e.path: e.target for e in walk(root) if e.type is EntryType.SYMLINK}
    assert got == links


# --- against the kernel -------------------------------------------------------------------

_PARTS = st.sampled_from(["..", "..", ".", "d", "e", "f", "x", "y", "z", "README"])
_LINK_PATHS = ["x", "y", "z", "d/x", "d/y", "d/e/x", "d/e/z", "f/y"]


@st.composite
def _link_sets(draw: st.DrawFn) -> dict[str, str]:
    paths = draw(st.lists(st.sampled_from(_LINK_PATHS), min_size=1, max_size=5, unique=True))
    return {p: "/".join(draw(st.lists(_PARTS, min_size=1, max_size=5))) for p in paths}


def _inside_inodes(root: Path) -> set[tuple[int, int]]:
    out = {(root.stat().st_dev, root.stat().st_ino)}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            st_ = os.lstat(os.path.join(dirpath, n))
            out.add((st_.st_dev, st_.st_ino))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(links=_link_sets())
def test_what_the_kernel_resolves_outside_is_refused(links: dict[str, str]) -> None:
    """Build the tree for real; whenever the kernel lands outside, the walk must refuse."""
    with tempfile.TemporaryDirectory() as tmp:
        root = _tree(Path(tmp) / "pkg", links)
        inside = _inside_inodes(root)
        for link in links:
            try:
                st_ = os.stat(root / link)
                kernel_outside = (st_.st_dev, st_.st_ino) not in inside
            except OSError as exc:  # dangling, through a file, or a loop: leads nowhere
                assert exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
                kernel_outside = False
            try:
                resolve_symlink(link, links)
                refused = False
            except SymlinkEscape:
                refused = True
            if kernel_outside:
                assert refused, f"{link} -> {links[link]} leaves the tree for the kernel"
