"""``python -m bench import``: ``packdist package create`` against cp -r, cp -r + sync, tar | zstd,
and the chunk stores a user would pick instead: ``restic backup`` and ``casync make``.

Each method runs in a fresh child process on the same generated tree and writes to a fresh
directory on the same file system (``/tmp/packdist-bench`` unless ``PACKDIST_BENCH_DIR`` is
set); the runs are interleaved and repeated, and the best time of each is reported, with
the highest peak RSS seen.

Page cache: by default *warm*. Before every timed run the benchmark writes back all dirty
pages (``sync``, untimed, so no run pays for the previous one's writes), drops the page
cache when it may (root; ``--no-drop`` to leave it), then reads the whole source tree once:
every method reads from memory, and the numbers compare processing and writing, not the
source disk. Dropping first also clears the state that makes file creation slow on an ext4
without a journal after many deletions (see :func:`bench.common.settle`), which would
otherwise penalise each run for the files the previous one deleted. ``--cold`` drops the
page cache and does not re-read the source (needs root).

packdist makes its library durable (one ``syncfs``) before it commits the package, so its
time includes writing everything to disk; ``cp -r`` alone leaves the copy in the page cache.
``cp -r + sync`` (``sync -f``, a syncfs of the target file system) is the like-for-like
anchor; both are shown. ``tar | zstd -1 -T1`` is an archive-and-compress reference; it does
not sync either.

The chunk-store anchors do what packdist does (cut, hash, store each chunk once) and are run
as a user would run them, defaults and their own durability included: ``restic backup`` into
a fresh local repository (``restic init`` untimed; the timed run includes opening the
repository, which derives the key from ``RESTIC_PASSWORD``; restic fsyncs each pack file it
saves) and ``casync make`` of a ``.caidx`` with a local chunk store (one compressed file per
chunk; casync does not sync). A tool that is not installed is skipped with a message
(``make bench`` installs both as root).

Where each run writes: a fresh folder in ``import-runs/``, a folder marked as a top of
hierarchies for ext4's inode allocator (``chattr +T``), so each run's output is placed in
block groups of its own. Otherwise every run would create its files beside the thousands the
previous run just deleted, and on an ext4 without a journal (the test VMs') each new inode
first skips every one freed in the last few minutes whose table block is dirty
(``find_inode_bit``/``recently_deleted``): a cost that grows with the square of the files
created, that a first import never pays, and that took 15-25% of packdist's CPU in the
benchmark (9,400 chunk files) against far less for cp's 3,135. Dropping the page cache
(below) does not clear it: the blocks get dirty again as the run allocates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    MIB,
    WORK_DIR,
    ChildFailed,
    Run,
    Tally,
    check_space,
    du_bytes,
    fmt,
    format_table,
    generate_tree,
    packdist_argv,
    remove_tree,
    run_child,
    run_quiet,
    scratch,
    settle,
)
from bench.memory import set_memory

DESCRIPTION = (
    "import a ~1 GiB tree: packdist package create vs cp -r (+ sync), tar | zstd,"
    " restic backup, casync make"
)

RSS_GOAL_MB = 300  # peak RSS goal, in MB (10^6 bytes)
SYNC_SPEED_GOAL = 0.8  # fraction of cp -r + sync's speed
CHUNK_STORE_GOAL = 1.5  # times as fast as the fastest chunk store
BENCH_PASSWORD = "packdist-bench"  # restic's repository password: a throwaway repository


@dataclass
class Method:
    name: str
    run: Callable[[Path, Path], Run]  # (source, fresh scratch dir) -> timed run
    synced: str  # how the method makes its output durable ("no" if it does not)
    tool: str = ""  # the program it needs: skipped, with a message, when missing
    chunk_store: bool = False  # an anchor for "x fastest chunk store"
    prepare: Callable[[Path], None] | None = None  # untimed, in the scratch dir, before


def _packdist_site(out: Path) -> None:
    run_quiet(packdist_argv("--home", out / "home", "site", "init", "--name", "bench"))


def _packdist(source: Path, out: Path) -> Run:
    home = out / "home"
    run = run_child(
        packdist_argv(
            "--home",
            home,
            "package",
            "create",
            source,
            "--name",
            "bench",
            "--version",
            "1",
            "--json",
        )
    )
    report = json.loads(run.stdout)
    if not report.get("created"):
        raise ChildFailed(f"packdist did not create the package: {run.stdout.strip()}")
    return run


def _cp(source: Path, out: Path) -> Run:
    return run_child(["cp", "-r", source, out / "copy"])


def _cp_sync(source: Path, out: Path) -> Run:
    script = 'cp -r "$1" "$2" && sync -f "$2"'
    return run_child(["sh", "-c", script, "sh", source, out / "copy"])


def _tar_zstd(source: Path, out: Path) -> Run:
    script = 'tar -C "$1" -cf - . | zstd -q -1 -T1 -o "$2"'
    return run_child(["sh", "-c", script, "sh", source, out / "tree.tar.zst"])


def _restic_repo(out: Path) -> None:
    env = {**os.environ, "RESTIC_PASSWORD": BENCH_PASSWORD}
    run_quiet(["restic", "--repo", out / "restic", "--cache-dir", out / "cache", "init"], env=env)


def _restic(source: Path, out: Path) -> Run:
    repo = out / "restic"
    env = {**os.environ, "RESTIC_PASSWORD": BENCH_PASSWORD}
    cache: list[str | os.PathLike[str]] = ["--cache-dir", out / "cache"]
    return run_child(
        ["restic", "--repo", repo, *cache, "--quiet", "backup", source], env=env, cwd=source
    )


def _casync(source: Path, out: Path) -> Run:
    store = out / "store"
    return run_child(["casync", "make", f"--store={store}", out / "tree.caidx", source])


METHODS = [
    Method("packdist package create", _packdist, synced="syncfs", prepare=_packdist_site),
    Method("cp -r", _cp, synced="no"),
    Method("cp -r + sync", _cp_sync, synced="syncfs"),
    Method("tar | zstd -1 -T1", _tar_zstd, synced="no"),
    Method(
        "restic backup",
        _restic,
        synced="fsync",
        tool="restic",
        chunk_store=True,
        prepare=_restic_repo,
    ),
    Method("casync make", _casync, synced="no", tool="casync", chunk_store=True),
]


def available(methods: list[Method]) -> list[Method]:
    """The methods whose tool is installed; says which are skipped, and why."""
    kept = []
    for m in methods:
        if m.tool and shutil.which(m.tool) is None:
            print(f"bench import: skipping {m.name}: {m.tool} is not installed (make bench)")
            continue
        kept.append(m)
    return kept


def runs_folder() -> Path:
    """The folder every run's output goes in, marked ``+T`` where the file system allows."""
    runs = WORK_DIR / "import-runs"
    runs.mkdir(parents=True, exist_ok=True)
    chattr = shutil.which("chattr")
    marked = chattr is not None and (
        subprocess.run([chattr, "+T", runs], capture_output=True, check=False).returncode == 0
    )
    if not marked:
        print(f"bench import: cannot mark {runs} +T (each run writes beside the last)")
    return runs


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench import", description=DESCRIPTION)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the test tree (1024)")
    p.add_argument("--keep", action="store_true", help="keep the generated tree for the next run")
    p.add_argument("--repeat", type=int, default=3, help="runs of each method; best is shown (3)")
    p.add_argument("--cold", action="store_true", help="drop the page cache before each run (root)")
    p.add_argument("--no-drop", action="store_true", help="do not drop the page cache between runs")
    p.add_argument(
        "--memory",
        choices=["idle", "recycled"],
        default="recycled",
        help="the VM's memory before each run: as an idle machine leaves it, or freed a"
        " moment before (default; see bench/memory.py)",
    )
    p.add_argument(
        "--only", action="append", metavar="METHOD", help="run only methods containing this"
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    methods = available(
        [m for m in METHODS if not args.only or any(o in m.name for o in args.only)]
    )
    tree = generate_tree(args.size_mib)
    check_space(WORK_DIR, 2 * tree.bytes, "one copy of the tree")
    tallies = {m.name: Tally(m.name) for m in methods}
    runs = runs_folder()
    cache = ""
    print(
        f"source: {tree.root}: {tree.files} files, {tree.mib:.0f} MiB"
        f" (big file {tree.big_file_bytes / MIB:.0f} MiB, text {tree.text_bytes / MIB:.0f} MiB);"
        f" best of {args.repeat}",
        flush=True,
    )
    try:
        for rep in range(args.repeat):
            for m in methods:
                out = scratch(runs)
                try:
                    cache = settle(tree.root, cold=args.cold, drop=not args.no_drop)
                    if m.prepare is not None:
                        m.prepare(out)
                    set_memory(args.memory, out, tree.bytes)
                    run = m.run(tree.root, out)
                    tallies[m.name].runs.append(run)
                    tallies[m.name].extra["out"] = fmt(du_bytes(out) / MIB, 0)
                    print(
                        f"  run {rep + 1}/{args.repeat} {m.name}: {run.seconds:.2f} s,"
                        f" peak RSS {run.peak_rss_kib / 1024:.0f} MiB",
                        flush=True,
                    )
                finally:
                    shutil.rmtree(out, ignore_errors=True)
    except ChildFailed as exc:
        print(f"bench import: {exc}")
        return 1
    finally:
        if not args.keep:
            remove_tree(args.size_mib)
    print()
    print(f"page cache {cache}; memory {args.memory} (bench/memory.py)")
    print(report(tree.bytes, methods, tallies))
    return 0


def report(source_bytes: int, methods: list[Method], tallies: dict[str, Tally]) -> str:
    ran = {name: t for name, t in tallies.items() if t.runs}
    anchor = ran.get("cp -r")
    anchor_sync = ran.get("cp -r + sync")
    stores = [tallies[m.name] for m in methods if m.chunk_store and tallies[m.name].runs]
    fastest_store = min(stores, key=lambda t: t.best.seconds) if stores else None
    rows = []
    for m in methods:
        t = tallies[m.name]
        if not t.runs:
            continue
        b = t.best
        rows.append(
            [
                m.name,
                fmt(b.seconds, 2),
                fmt(source_bytes / 1e6 / b.seconds, 0),
                fmt(t.peak_rss_mib, 0),
                fmt(b.cpu, 2),
                t.extra.get("out", ""),
                m.synced,
                f"{anchor.best.seconds / b.seconds:.2f}" if anchor else "",
                f"{anchor_sync.best.seconds / b.seconds:.2f}" if anchor_sync else "",
                f"{fastest_store.best.seconds / b.seconds:.2f}" if fastest_store else "",
            ]
        )
    headers = [
        "method",
        "seconds",
        "MB/s",
        "peak RSS MiB",
        "CPU s",
        "out MiB",
        "synced",
        "speed vs cp -r",
        "vs cp -r + sync",
        "vs fastest chunk store",
    ]
    lines = [format_table(headers, rows)]
    pd = ran.get("packdist package create")
    if pd:
        lines.append("")
        lines.append("packdist: " + "; ".join(verdicts(pd, anchor_sync, fastest_store)))
        lines.append(
            "note: packdist syncfs'es its library before committing, restic fsyncs each pack;"
            " cp -r, tar | zstd and casync leave their output in the page cache."
            " cp -r + sync is the like-for-like anchor."
        )
    return "\n".join(lines)


def verdicts(pd: Tally, anchor_sync: Tally | None, fastest_store: Tally | None) -> list[str]:
    """Each goal of the import, met or not, with the figure it was judged on."""
    rss_mb = pd.peak_rss_mib * MIB / 1e6
    out = [
        f"peak RSS {rss_mb:.0f} MB (goal < {RSS_GOAL_MB} MB): "
        + ("met" if rss_mb < RSS_GOAL_MB else "NOT met")
    ]
    if anchor_sync:
        ratio = anchor_sync.best.seconds / pd.best.seconds
        out.append(
            f"speed {ratio:.2f} x cp -r + sync (goal >= {SYNC_SPEED_GOAL}): "
            + ("met" if ratio >= SYNC_SPEED_GOAL else "NOT met")
        )
    if fastest_store:
        ratio = fastest_store.best.seconds / pd.best.seconds
        out.append(
            f"speed {ratio:.2f} x {fastest_store.name}, the fastest chunk store"
            f" (goal >= {CHUNK_STORE_GOAL}): " + ("met" if ratio >= CHUNK_STORE_GOAL else "NOT met")
        )
    return out
