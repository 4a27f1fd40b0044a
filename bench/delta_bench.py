"""``python -m bench delta``: a new version with ~1% of its bytes changed, packdist vs rsync.

The package (generated, deterministic seed): 64 MiB of random, incompressible bytes, one
40 MiB file plus 12 files of 0.5-3 MiB in four folders. Version 2 of it: 100 in-place
overwrites of 256 B-12 KiB at random offsets across the files (weighted by size, so about
two thirds land in the big file), one insertion of 5,000 bytes in the middle of the big file
(shifting everything after it) and one 2-3 MiB file moved, unchanged, to another folder:
about 1% of the bytes changed.

packdist: a real site (``site serve``) and a real agent (``agent serve``) on 127.0.0.1, both
versions imported (untimed). The agent dials the site through a counting TCP proxy (its
``--site``), and the site reaches the agent through another (the server's ``--url``): the
two together count every byte the two exchanged, both ways, headers, heartbeats and status
polls included. Each round starts a fresh agent, times ``distribute NAME@1 --to dp --wait``
to its empty home (the *full* row), then ``distribute NAME@2`` (the *delta* row); the
job's own ``bytes_sent`` (``job show --json``: chunk frames only) is shown too.

rsync: an rsync daemon serves both trees through the same kind of proxy. *Full*: ``rsync -a``
into an empty folder (version 1). *Delta*: ``rsync -a --no-whole-file --delete-delay`` of
version 2 into a copy of version 1 (``cp -a``, untimed, so unchanged files keep size and
mtime and are skipped), once as is and once with ``--fuzzy``; rsync's own ``--stats``
totals are shown too. rsync sees the moved file as a new file and sends it whole;
``--fuzzy`` looks for a basis only in the new file's own folder, so it does not find it.
rsync does not sync its output: ``+ sync`` is a ``sync -f`` of the target timed right
after (packdist syncs before it reports a version installed, so its two columns are one).

Before each timed run: dirty pages written back and the page cache dropped (root), then
what the run reads warmed (the site's library and the agent's home, or the trees and the
target). Best time of ``--repeat`` rounds; the bytes are those of the best round (they
vary by a few hundred bytes: heartbeats).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    KIB,
    MIB,
    WORK_DIR,
    ChildFailed,
    CountingProxy,
    PackdistSetup,
    RsyncDaemon,
    check_space,
    fmt,
    format_table,
    read_tree,
    run_child,
    run_quiet,
    scratch,
    settle,
)

DESCRIPTION = "v1 -> v2 of a 64 MiB package with ~1% changed: packdist vs rsync, bytes on the wire"

BIG_FILE = "data/assets.pak"
BIG_BYTES = 40 * MIB
SMALL_FILES = 12
SMALL_BYTES = 24 * MIB  # shared by the small files, each 0.5-3 MiB
FOLDERS = ("bin", "lib", "share/res", "plugins")
EDITS = 100
EDIT_MIN, EDIT_MAX = 256, 12 * KIB
INSERT_BYTES = 5000
MTIME_V1 = 1_767_225_600  # 2026-01-01: fixed, so rsync's quick check sees every change
MTIME_V2 = MTIME_V1 + 86_400  # of the files v2 edits (all within a second otherwise)


# ------------------------------------------------------------------------------ versions


@dataclass(frozen=True)
class Versions:
    v1: Path
    v2: Path
    bytes: int  # of version 1
    files: int
    edited_bytes: int  # overwritten in place (overlaps counted twice)
    edited_files: int
    renamed: tuple[str, str]

    @property
    def changed_bytes(self) -> int:
        return self.edited_bytes + INSERT_BYTES


def _small_sizes(rng: random.Random) -> list[int]:
    """12 sizes of 0.5-3 MiB adding up to SMALL_BYTES."""
    while True:
        raw = [rng.uniform(0.5, 3.0) for _ in range(SMALL_FILES)]
        scale = SMALL_BYTES / sum(raw)
        sizes = [int(r * scale) for r in raw]
        sizes[-1] += SMALL_BYTES - sum(sizes)
        if all(MIB // 2 <= s <= 3 * MIB for s in sizes):
            return sizes


def generate(root: Path, seed: int, log: Callable[[str], None] = print) -> Versions:
    """Write version 1 and version 2 below ``root`` (deterministic for a seed)."""
    rng = random.Random(seed)
    v1, v2 = root / "v1", root / "v2"
    shutil.rmtree(root, ignore_errors=True)
    files: dict[str, int] = {}
    for i, size in enumerate(_small_sizes(rng)):
        folder = FOLDERS[i % len(FOLDERS)]
        files[f"{folder}/part{i:02d}.bin"] = size
    files[BIG_FILE] = BIG_BYTES
    for rel, size in files.items():
        path = v1 / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                piece = min(left, 8 * MIB)
                f.write(rng.randbytes(piece))
                left -= piece
        os.utime(path, (MTIME_V1, MTIME_V1))
    shutil.copytree(v1, v2, symlinks=True)  # copy2: unchanged files keep their mtime

    # the moved file: the first small file of 2-3 MiB, to another folder, unchanged
    moved = next(r for r, s in files.items() if r != BIG_FILE and s >= 2 * MIB)
    target = f"{FOLDERS[(FOLDERS.index(moved.rsplit('/', 1)[0]) + 1) % len(FOLDERS)]}/moved/"
    renamed = (moved, target + moved.rsplit("/", 1)[1])

    # scattered in-place edits across the other files, weighted by size
    editable = [(r, s) for r, s in files.items() if r != moved]
    starts = list(itertools.accumulate((s for _r, s in editable), initial=0))
    edited = 0
    touched: set[str] = set()
    for _ in range(EDITS):
        at = rng.randrange(starts[-1])
        index = bisect.bisect_right(starts, at) - 1
        rel, size = editable[index]
        at -= starts[index]
        length = min(rng.randint(EDIT_MIN, EDIT_MAX), size - at)
        with open(v2 / rel, "r+b") as f:
            f.seek(at)
            f.write(rng.randbytes(length))
        edited += length
        touched.add(rel)

    # one insertion in the middle of the big file
    big = v2 / BIG_FILE
    data = big.read_bytes()
    middle = len(data) // 2
    big.write_bytes(data[:middle] + rng.randbytes(INSERT_BYTES) + data[middle:])
    touched.add(BIG_FILE)
    for rel in touched:
        os.utime(v2 / rel, (MTIME_V2, MTIME_V2))

    (v2 / renamed[1]).parent.mkdir(parents=True, exist_ok=True)
    os.rename(v2 / renamed[0], v2 / renamed[1])
    info = Versions(v1, v2, sum(files.values()), len(files), edited, len(touched), renamed)
    log(
        f"package: {info.bytes / MIB:.0f} MiB in {info.files} files; v2: {EDITS} edits"
        f" ({edited:,} bytes in {len(touched)} files), {INSERT_BYTES:,} bytes inserted in"
        f" {BIG_FILE}, {renamed[0]} moved to {renamed[1]}:"
        f" {info.changed_bytes / info.bytes:.2%} of the bytes changed"
    )
    return info


def tree_digest(root: Path) -> str:
    """One digest of every path, mode and content below ``root`` (to check a copy)."""
    h = hashlib.blake2b()
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder, name)
            h.update(f"{path.relative_to(root)}\0{path.stat().st_mode:o}\0".encode())
            h.update(hashlib.blake2b(path.read_bytes()).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- measuring


@dataclass
class Measure:
    seconds: float
    synced: float  # seconds including a sync of the target
    wire: int  # bytes through the counting proxies, both ways
    own: int  # the tool's own count: job bytes_sent, or rsync's total bytes sent + received
    note: str = ""


@dataclass
class Method:
    name: str
    scenario: str  # "full" or "delta"
    runs: list[Measure] = field(default_factory=list)

    @property
    def best(self) -> Measure:
        return min(self.runs, key=lambda m: m.synced)


def warm(paths: list[Path]) -> None:
    """Write back and drop the page cache (root), then read ``paths`` once."""
    settle(paths[0], cold=False)
    for p in paths[1:]:
        read_tree(p)


_STAT = re.compile(
    r"^(Total bytes sent|Total bytes received|Literal data|Matched data):\s*([\d,]+)"
)


def rsync_stats(output: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in output.splitlines():
        if m := _STAT.match(line.strip()):
            found[m.group(1)] = int(m.group(2).replace(",", ""))
    return found


def measure_rsync(argv: list[str], dest: Path, proxy: CountingProxy) -> Measure:
    before = proxy.total()
    run = run_child(["rsync", "--stats", *argv, str(dest)])
    wire = proxy.total() - before
    flush = run_child(["sync", "-f", str(dest)])
    stats = rsync_stats(run.stdout)
    own = stats.get("Total bytes sent", 0) + stats.get("Total bytes received", 0)
    note = f"literal {stats.get('Literal data', 0):,} B, matched {stats.get('Matched data', 0):,} B"
    return Measure(run.seconds, run.seconds + flush.seconds, wire, own, note)


def measure_packdist(
    setup: PackdistSetup, name: str, version: str, proxies: list[CountingProxy]
) -> Measure:
    before = sum(p.total() for p in proxies)
    run = setup.distribute(name, version, as_json=True)
    wire = sum(p.total() for p in proxies) - before
    job_id = str(json.loads(run.stdout)["job"])
    job = setup.job(job_id)
    instructions = job["instructions"]
    assert isinstance(instructions, list)
    states = {str(i["state"]) for i in instructions}
    if job["state"] != "succeeded":
        raise ChildFailed(f"job {job_id} ended {job['state']} ({states})")
    own = sum(int(i["bytes_sent"]) for i in instructions)
    note = f"job {job_id}; agent: {setup.agent_said(name, version)}"
    return Measure(run.seconds, run.seconds, wire, own, note)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench delta", description=DESCRIPTION)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, site)")
    args = parser.parse_args(argv)
    if shutil.which("rsync") is None:
        print("bench delta: rsync is not installed (make bench installs it as root)")
        return 2
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    check_space(WORK_DIR, 64 * 8 * MIB, "the delta benchmark")
    work = scratch(WORK_DIR, "delta-")
    versions = generate(work / "trees", args.seed)
    methods = {
        m.name: m
        for m in (
            Method("packdist distribute v1 (empty server)", "full"),
            Method("rsync -a (empty dir)", "full"),
            Method("packdist distribute v2 (holds v1)", "delta"),
            Method("rsync -a --no-whole-file (v1 copy)", "delta"),
            Method("rsync -a --no-whole-file --fuzzy (v1 copy)", "delta"),
        )
    }
    names = list(methods)
    setup = PackdistSetup(work)
    setup.create(versions.v1, "1")
    setup.create(versions.v2, "2")
    setup.serve()
    library = setup.site / "library"
    site_proxy = CountingProxy.before(setup.site_url)  # agents dial the site through it
    daemon = RsyncDaemon({"v1": versions.v1, "v2": versions.v2}, work)
    rsync_proxy = CountingProxy(daemon.port)
    agent_proxies: list[CountingProxy] = []

    def advertise(url: str) -> str:  # the site reaches the agent through a proxy too
        agent_proxies.append(CountingProxy.before(url))
        return agent_proxies[-1].url

    v2_digest = tree_digest(versions.v2)
    try:
        for r in range(args.repeat):
            name = setup.fresh_agent(site_url=site_proxy.url, advertise=advertise)
            proxies = [site_proxy, agent_proxies[-1]]
            home = setup.agent_home(name)
            warm([library, home])
            methods[names[0]].runs.append(measure_packdist(setup, name, "1", proxies))
            warm([library, home])
            methods[names[2]].runs.append(measure_packdist(setup, name, "2", proxies))
            installed = home / "packages" / setup.package / "2"
            if r == 0 and tree_digest(installed) != v2_digest:
                raise ChildFailed(f"{installed} differs from version 2")
            setup.stop_agent(name)
            agent_proxies[-1].stop()
            shutil.rmtree(home, ignore_errors=True)

            dest = work / f"rsync-{r}"
            dest.mkdir()
            warm([versions.v1])
            methods[names[1]].runs.append(
                measure_rsync(["-a", daemon.url("v1", rsync_proxy.port)], dest, rsync_proxy)
            )
            shutil.rmtree(dest)
            for label, extra in ((names[3], []), (names[4], ["--fuzzy"])):
                run_quiet(["cp", "-a", str(versions.v1), str(dest)])
                warm([versions.v2, dest])
                cmd = ["-a", "--no-whole-file", "--delete-delay", *extra]
                methods[label].runs.append(
                    measure_rsync([*cmd, daemon.url("v2", rsync_proxy.port)], dest, rsync_proxy)
                )
                if r == 0 and tree_digest(dest) != v2_digest:
                    raise ChildFailed(f"rsync's copy {dest} differs from version 2")
                shutil.rmtree(dest)
    finally:
        setup.stop()
        daemon.stop()
        for p in [site_proxy, rsync_proxy, *agent_proxies]:
            p.stop()

    anchors = {"full": methods[names[1]].best, "delta": methods[names[3]].best}
    rows = []
    for m in methods.values():
        b, a = m.best, anchors[m.scenario]
        rows.append(
            [
                m.name,
                fmt(b.seconds, 2),
                fmt(b.synced, 2),
                f"{b.wire:,}",
                f"{b.own:,}",
                f"{b.wire / versions.bytes:.2%}",
                fmt(b.wire / a.wire, 2),
                fmt(b.seconds / a.seconds, 2),
                fmt(b.synced / a.synced, 2),
            ]
        )
    headers = [
        "method",
        "seconds",
        "+ sync",
        "bytes on the wire",
        "own count",
        "% of package",
        "bytes vs rsync",
        "time vs rsync",
        "vs rsync + sync",
    ]
    print(
        f"\n{versions.bytes / MIB:.0f} MiB package ({versions.files} files), v2 with"
        f" {versions.changed_bytes / versions.bytes:.2%} changed; one server on loopback,"
        f" best of {args.repeat}"
    )
    print(format_table(headers, rows, markdown=args.markdown))
    print(
        "\nown count: packdist: the job's bytes_sent (chunk frames); rsync: --stats total"
        " bytes sent + received. '+ sync': with a sync -f of the target (packdist syncs)."
    )
    for m in methods.values():
        wires = sorted({x.wire for x in m.runs})
        spread = f"{wires[0]:,}" if len(wires) == 1 else f"{wires[0]:,}-{wires[-1]:,}"
        times = ", ".join(fmt(x.seconds, 2) for x in m.runs)
        print(f"  {m.name}: runs {times} s; wire {spread} B; {m.best.note}")
    if args.keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
