"""Transfer efficiency end to end: what crosses the network between a real site and agent.

Each figure is checked twice: the ``bytes_sent`` that ``job show`` reports, and the bytes a
counting TCP proxy between the agent and the site saw in both directions (HTTP included).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

from tests import harness as h

KiB, MB = 1024, 1024 * 1024
FILES = {
    "data/big.bin": 12 * MB + 3,
    "data/a.bin": 2 * MB + 11,
    "data/b.bin": 1 * MB + 512 * KiB,
    "lib/moved.bin": 768 * KiB + 5,
}
UNLIMITED = 1e12  # the proxy only counts

Make = Callable[..., h.Cluster]


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def edit_tree(v1: Path, v2: Path, seed: int = 5) -> None:
    """v2: about 1% of v1's bytes changed in scattered edits of 1-3 KiB, 4 KiB + 7 bytes
    inserted in the middle of the big file (the rest shifts), one file renamed."""
    shutil.copytree(v1, v2, symlinks=True)
    rnd = random.Random(seed)
    budget = int(0.01 * tree_bytes(v1))
    paths = list(FILES)
    weights = [FILES[p] for p in paths]
    while budget > 0:
        rel = rnd.choices(paths, weights)[0]
        n = min(budget, rnd.randrange(1 * KiB, 3 * KiB))
        with (v2 / rel).open("r+b") as f:
            f.seek(rnd.randrange(FILES[rel] - n))
            f.write(rnd.randbytes(n))
        budget -= n
    big = v2 / "data/big.bin"
    content = big.read_bytes()
    middle = len(content) // 2
    big.write_bytes(content[:middle] + rnd.randbytes(4 * KiB + 7) + content[middle:])
    (v2 / "lib/moved.bin").rename(v2 / "lib/renamed.bin")


def two_versions(tmp_path: Path) -> tuple[Path, Path]:
    """v1, and v2 made from it by :func:`edit_tree`."""
    v1 = h.make_tree(tmp_path / "v1", FILES, seed=3)
    edit_tree(v1, tmp_path / "v2")
    return v1, tmp_path / "v2"


def distribute(c: h.Cluster, tree: Path, ref: str) -> tuple[dict[str, object], int]:
    """Create and distribute ``ref`` to dp1; its instruction and the proxy's byte count."""
    name, version = ref.split("@")
    c.site.create_package(tree, name, version)
    proxy = c.proxies["dp1"]
    before = proxy.down_bytes + proxy.up_bytes
    job_id = c.site.distribute(ref, ["dp1"])
    code = c.site.wait_job(job_id, 120)
    doc = c.site.job(job_id)
    assert code == 0, h.describe_job(doc)
    h.assert_same_tree(tree, c.agents["dp1"].package_dir(name, version))
    return h.instruction(doc, "dp1"), proxy.down_bytes + proxy.up_bytes - before


def test_next_version_with_one_percent_changed_crosses_under_three_percent(
    cluster: Make, tmp_path: Path
) -> None:
    v1, v2 = two_versions(tmp_path)
    size = tree_bytes(v2)
    c = cluster("dp1", throttle={"dp1": UNLIMITED})
    first, _ = distribute(c, v1, "app@1")
    assert first["bytes_sent"] >= tree_bytes(v1), first  # random bytes: nothing to gain
    second, carried = distribute(c, v2, "app@2")
    sent = int(str(second["bytes_sent"]))
    assert 0 < sent < 0.03 * size, f"bytes_sent {sent} of {size}: {second}"
    assert carried < 0.03 * size, f"the proxy carried {carried} of {size}"


def test_compressible_package_crosses_compressed(cluster: Make, tmp_path: Path) -> None:
    tree = tmp_path / "text"
    (tree / "src").mkdir(parents=True)
    rnd = random.Random(9)
    words = [
        bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz", k=rnd.randrange(2, 9))) for _ in range(400)
    ]
    for i in range(8):
        lines = (b" ".join(rnd.choices(words, k=12)) + b";\n" for _ in range(40_000))
        (tree / "src" / f"module{i}.c").write_bytes(b"".join(lines))
    size = tree_bytes(tree)
    # A link slower than the compressor (on a faster one the site sends text raw: compressing
    # would cost more time than it saves; see docs/transfer.md)
    c = cluster("dp1", throttle={"dp1": 20 * MB})
    i, carried = distribute(c, tree, "text@1")
    sent = int(str(i["bytes_sent"]))
    assert 0 < sent < 0.5 * size, f"bytes_sent {sent} of {size}"
    assert carried < 0.5 * size + 64 * KiB, f"the proxy carried {carried} of {size}"


def test_incompressible_package_does_not_grow(cluster: Make, tmp_path: Path) -> None:
    tree = h.make_tree(tmp_path / "noise", {"data/noise.bin": 8 * MB + 1, "x.bin": 300_000})
    size = tree_bytes(tree)
    c = cluster("dp1", throttle={"dp1": UNLIMITED})
    i, carried = distribute(c, tree, "noise@1")
    sent = int(str(i["bytes_sent"]))
    chunks = size // (32 * KiB) + 20  # at most one frame header per min-size chunk, per file
    assert size <= sent <= size + 41 * chunks, f"bytes_sent {sent} of {size}"
    assert carried <= size + 41 * chunks + 64 * KiB, f"the proxy carried {carried} of {size}"


def test_a_new_versions_deltas_are_prepared_at_import_and_a_damaged_one_is_made_again(
    cluster: Make, tmp_path: Path
) -> None:
    v1, v2 = two_versions(tmp_path)
    (v2 / "lib/renamed.bin").unlink()  # a moved file's bases are the agent's guess alone
    c = cluster("dp1", throttle={"dp1": UNLIMITED})
    distribute(c, v1, "app@1")
    doc = c.site.create_package(v2, "app", "2")
    assert doc["deltas"]["against"] == "app@1" and doc["deltas"]["chunks"] > 3, doc
    kept_root = c.site.home / "library" / "deltas"
    kept = sorted(p for p in kept_root.rglob("*") if p.is_file())
    assert len(kept) == doc["deltas"]["chunks"]
    damaged = kept[0]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    untouched = {p: p.stat().st_mtime_ns for p in kept[1:]}

    job_id = c.site.distribute("app@2", ["dp1"])
    assert c.site.wait_job(job_id, 120) == 0, h.describe_job(c.site.job(job_id))
    h.assert_same_tree(v2, c.agents["dp1"].package_dir("app", "2"))
    sent = int(str(h.instruction(c.site.job(job_id), "dp1")["bytes_sent"]))
    assert 0 < sent < 0.03 * tree_bytes(v2), sent
    after = sorted(p for p in kept_root.rglob("*") if p.is_file())
    assert after == kept, "the agent named exactly the bases the import foresaw"
    assert {p: p.stat().st_mtime_ns for p in kept[1:]} == untouched, "read, not made again"
    assert damaged.read_bytes() != bytes(data), "the damaged delta was made again"
