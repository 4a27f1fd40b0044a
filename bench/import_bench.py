"""``python -m bench import``: ``packdist package create`` against cp -r, cp -r + sync, tar | zstd.

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
"""

from __future__ import annotations

import argparse
import json
import shutil
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

DESCRIPTION = "import a ~1 GiB tree: packdist package create vs cp -r, cp -r + sync, tar | zstd"

RSS_GOAL_MB = 300  # peak RSS goal, in MB (10^6 bytes)
SPEED_GOAL = 0.5  # fraction of cp -r's speed


@dataclass
class Method:
    name: str
    run: Callable[[Path, Path], Run]  # (source, fresh scratch dir) -> timed run
    synced: bool


def _packdist(source: Path, out: Path) -> Run:
    home = out / "home"
    run_quiet(packdist_argv("--home", home, "site", "init", "--name", "bench"))
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


METHODS = [
    Method("packdist package create", _packdist, synced=True),
    Method("cp -r", _cp, synced=False),
    Method("cp -r + sync", _cp_sync, synced=True),
    Method("tar | zstd -1 -T1", _tar_zstd, synced=False),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench import", description=DESCRIPTION)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the test tree (1024)")
    p.add_argument("--keep", action="store_true", help="keep the generated tree for the next run")
    p.add_argument("--repeat", type=int, default=3, help="runs of each method; best is shown (3)")
    p.add_argument("--cold", action="store_true", help="drop the page cache before each run (root)")
    p.add_argument("--no-drop", action="store_true", help="do not drop the page cache between runs")
    p.add_argument(
        "--only", action="append", metavar="METHOD", help="run only methods containing this"
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    methods = [m for m in METHODS if not args.only or any(o in m.name for o in args.only)]
    tree = generate_tree(args.size_mib)
    check_space(WORK_DIR, 2 * tree.bytes, "one copy of the tree")
    tallies = {m.name: Tally(m.name) for m in methods}
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
                out = scratch()
                try:
                    cache = settle(tree.root, cold=args.cold, drop=not args.no_drop)
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
    print(f"page cache {cache}")
    print(report(tree.bytes, methods, tallies))
    return 0


def report(source_bytes: int, methods: list[Method], tallies: dict[str, Tally]) -> str:
    anchor = tallies.get("cp -r")
    anchor_sync = tallies.get("cp -r + sync")
    rows = []
    for m in methods:
        t = tallies[m.name]
        b = t.best
        rows.append(
            [
                m.name,
                fmt(b.seconds, 2),
                fmt(source_bytes / 1e6 / b.seconds, 0),
                fmt(t.peak_rss_mib, 0),
                fmt(b.cpu, 2),
                t.extra.get("out", ""),
                "yes" if m.synced else "no",
                f"{anchor.best.seconds / b.seconds:.2f}" if anchor else "",
                f"{anchor_sync.best.seconds / b.seconds:.2f}" if anchor_sync else "",
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
    ]
    lines = [format_table(headers, rows)]
    pd = tallies.get("packdist package create")
    if pd:
        rss_mb = pd.peak_rss_mib * MIB / 1e6
        verdicts = [
            f"peak RSS {rss_mb:.0f} MB (goal < {RSS_GOAL_MB} MB): "
            + ("met" if rss_mb < RSS_GOAL_MB else "NOT met")
        ]
        for label, a in (("cp -r", anchor), ("cp -r + sync", anchor_sync)):
            if a:
                ratio = a.best.seconds / pd.best.seconds
                verdicts.append(
                    f"speed {ratio:.2f} x {label} (goal >= {SPEED_GOAL}): "
                    + ("met" if ratio >= SPEED_GOAL else "NOT met")
                )
        lines.append("")
        lines.append("packdist: " + "; ".join(verdicts))
        lines.append(
            "note: packdist syncfs'es its library before committing; cp -r and tar | zstd"
            " leave their output in the page cache. cp -r + sync is the like-for-like anchor."
        )
    return "\n".join(lines)
