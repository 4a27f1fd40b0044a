"""Trees the site accepts that are hostile to naive code: nothing the site took may ever
brick an agent (removal, the chunk cache and start-up recovery all walk these trees).

Real site and agent processes, real HTTP on 127.0.0.1 (tests/harness.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from packdist.core.fsutil import remove_tree
from tests import harness as h

DEPTH = 1200  # past Python's default recursion limit (1,000)


def _deep_tree(root: Path, depth: int) -> Path:
    """``d/d/.../d`` ``depth`` directories deep, a file at the middle and at the bottom."""
    root.mkdir(parents=True)
    (root / "top.txt").write_bytes(b"top\n")
    folder = root
    for level in range(depth):
        folder = folder / "d"
        folder.mkdir()
        if level in (depth // 2, depth - 1):
            (folder / f"at-{level}.txt").write_bytes(f"level {level}\n".encode() * 50)
    return root


def _deepest(root: Path, depth: int) -> Path:
    return root.joinpath(*["d"] * depth, f"at-{depth - 1}.txt")


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, emptied afterwards however the test ended: pytest's own clean-up of old
    temporary folders (shutil.rmtree) would exhaust the stack on these trees later."""
    yield tmp_path
    for child in tmp_path.iterdir():
        remove_tree(child)


def test_package_nested_1200_deep_never_bricks_the_agent(deep_tmp: Path) -> None:
    tmp_path = deep_tmp
    tree = _deep_tree(tmp_path / "src", DEPTH)
    c = h.start_cluster(tmp_path / "cluster", ["dp1"])
    agent = c.agents["dp1"]
    try:
        c.site.create_package(tree, "deep", "1.0")
        job = c.site.distribute("deep@1.0", ["dp1"])
        assert c.site.wait_job(job, 120) == 0, h.describe_job(c.site.job(job))
        installed = agent.package_dir("deep", "1.0")
        assert _deepest(installed, DEPTH).read_bytes() == _deepest(tree, DEPTH).read_bytes()
        checked = c.site.json("validate", "--server", "dp1")
        assert checked["corrupt"] == 0, checked

        removed = c.site.json("package", "remove", "deep@1.0", "--from", "dp1", "--wait",
                              "--timeout", "60")  # fmt: skip
        assert removed["state"] == "succeeded", h.describe_job(removed)
        assert not agent.has_package("deep", "1.0")

        # The removed tree is in the agent's chunk cache: start-up measures and trims it.
        agent.restart()
        assert agent.running and agent.healthy()
        again = c.site.distribute("deep@1.0", ["dp1"])
        assert c.site.wait_job(again, 120) == 0, h.describe_job(c.site.job(again))
        assert _deepest(installed, DEPTH).is_file()
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()
