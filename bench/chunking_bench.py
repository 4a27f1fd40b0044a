"""``python -m bench chunking``: the chunk-size trade-off, import speed against delta size.

For each average chunk size (``min = avg/4``, ``max = 4*avg``, the ratios of the default;
pyfastcdc's actual mean is about ``avg + min``):

* import the generated tree (~1 GiB, see :func:`bench.common.generate_tree`) into a fresh
  site in a child process (like ``packdist package create``, syncfs included), page cache
  warm, best of ``--repeat``: seconds, MB/s, peak RSS and the number of chunk files;
* delta efficiency: cut a random file (64 MiB), edit it, cut it again, and count the bytes of
  the new version's chunks that the old version does not have (what a distribution server
  holding the old version must fetch), as a % of the file. Two edit patterns: 20 in-place
  edits of 3 KiB at random places plus one 4 KiB insertion in the middle (0.1% of the
  bytes changed), and the same with 200 edits (~1%). Averaged over ``--seeds`` files.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    KIB,
    MIB,
    REPO,
    WORK_DIR,
    ChildFailed,
    Run,
    check_space,
    count_files,
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
from packdist.core.chunking import DEFAULT_PARAMS, Chunker, ChunkerParams
from packdist.core.digest import Digest

DESCRIPTION = "chunk-size trade-off: import MB/s and chunk count vs bytes re-sent after edits"

EDIT_SIZE = 3 * KIB
INSERT_SIZE = 4 * KIB
EDIT_PATTERNS = (20, 200)  # scattered in-place edits (plus one insertion in the middle)


def params_for(avg_kib: int) -> ChunkerParams:
    avg = avg_kib * KIB
    return ChunkerParams(avg=avg, min=avg // 4, max=avg * 4)


# ----------------------------------------------------------------------------- import


def child(argv: list[str]) -> None:
    """In the child: import ``SRC`` into the site ``HOME`` with the given chunk sizes."""
    from packdist.site.home import SiteHome
    from packdist.site.importer import import_tree

    home, src, avg, low, high = argv
    params = ChunkerParams(avg=int(avg), min=int(low), max=int(high))
    record, created = import_tree(
        SiteHome.open(Path(home)), Path(src), "bench", "1", Chunker(params)
    )
    print(json.dumps({"created": created, "chunks": record.chunk_count, "size": record.size}))


def import_once(source: Path, params: ChunkerParams) -> tuple[Run, int]:
    out = scratch()
    try:
        home = out / "home"
        run_quiet(packdist_argv("--home", home, "site", "init", "--name", "bench"))
        code = "import sys; from bench.chunking_bench import child; child(sys.argv[1:])"
        run = run_child(
            [
                sys.executable,
                "-c",
                code,
                home,
                source,
                str(params.avg),
                str(params.min),
                str(params.max),
            ],
            cwd=REPO,
        )
        report = json.loads(run.stdout)
        if not report["created"]:
            raise ChildFailed(f"the import did not create the package: {run.stdout}")
        files = count_files(home / "library")
        return run, files
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------------------ delta


def edit(data: bytes, edits: int, rng: random.Random) -> bytes:
    """``edits`` in-place overwrites of EDIT_SIZE at random places, one insertion mid-file."""
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(0, len(out) - EDIT_SIZE)
        out[at : at + EDIT_SIZE] = rng.randbytes(EDIT_SIZE)
    middle = len(out) // 2
    out[middle:middle] = rng.randbytes(INSERT_SIZE)
    return bytes(out)


@dataclass
class Delta:
    new_bytes: int
    new_chunks: int
    chunks: int


def delta(chunker: Chunker, old: bytes, new: bytes) -> Delta:
    have = {Digest.of(c) for c in chunker.cut_bytes(old)}
    chunks = chunker.cut_bytes(new)
    fresh = [c for c in chunks if Digest.of(c) not in have]
    return Delta(sum(len(c) for c in fresh), len(fresh), len(chunks))


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench chunking", description=DESCRIPTION)
    p.add_argument("--avg-kib", type=int, nargs="+", default=[64, 128, 256], help="(64 128 256)")
    p.add_argument("--size-mib", type=int, default=1024, help="size of the test tree (1024)")
    p.add_argument("--keep", action="store_true", help="keep the generated tree")
    p.add_argument("--repeat", type=int, default=3, help="imports per size; best is shown (3)")
    p.add_argument("--delta-mib", type=int, default=64, help="size of the edited file (64)")
    p.add_argument("--seeds", type=int, default=3, help="edited files to average over (3)")
    p.add_argument("--no-import", action="store_true", help="only the delta measurement")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = [params_for(a) for a in args.avg_kib]
    rows: dict[int, dict[str, str]] = {p.avg: {} for p in sizes}

    # Delta efficiency (in this process: pure CPU, no disk).
    file_bytes = args.delta_mib * MIB
    originals = [random.Random(seed).randbytes(file_bytes) for seed in range(args.seeds)]
    edited = {
        n: [edit(d, n, random.Random(1000 + seed)) for seed, d in enumerate(originals)]
        for n in EDIT_PATTERNS
    }
    for params in sizes:
        chunker = Chunker(params)
        for n in EDIT_PATTERNS:
            results = [delta(chunker, o, e) for o, e in zip(originals, edited[n], strict=True)]
            mean = sum(r.new_bytes for r in results) / len(results)
            rows[params.avg][f"delta{n}"] = f"{100 * mean / file_bytes:.1f}%"
            rows[params.avg][f"delta{n}_mib"] = fmt(mean / MIB, 1)
        rows[params.avg]["mean_kib"] = fmt(file_bytes / results[0].chunks / KIB, 0)
        print(f"  delta measured for avg {params.avg // KIB} KiB", flush=True)

    tree = None
    if not args.no_import:
        tree = generate_tree(args.size_mib)
        check_space(WORK_DIR, 2 * tree.bytes, "one import of the tree")
        best: dict[int, tuple[Run, int]] = {}
        try:
            for rep in range(args.repeat):
                for params in sizes:
                    settle(tree.root, cold=False)
                    run, files = import_once(tree.root, params)
                    print(
                        f"  run {rep + 1}/{args.repeat} avg {params.avg // KIB} KiB:"
                        f" {run.seconds:.2f} s, {files} library files",
                        flush=True,
                    )
                    if params.avg not in best or run.seconds < best[params.avg][0].seconds:
                        best[params.avg] = (run, files)
        except ChildFailed as exc:
            print(f"bench chunking: {exc}")
            return 1
        finally:
            if not args.keep:
                remove_tree(args.size_mib)
        for avg, (run, files) in best.items():
            rows[avg]["seconds"] = fmt(run.seconds, 2)
            rows[avg]["mbs"] = fmt(tree.bytes / 1e6 / run.seconds, 0)
            rows[avg]["files"] = f"{files:,}"
            rows[avg]["rss"] = fmt(run.peak_rss_kib / 1024, 0)

    headers = ["avg / min / max KiB", "mean chunk KiB"]
    if tree is not None:
        headers += ["import s", "import MB/s", "peak RSS MiB", "chunk files"]
    headers += [f"new bytes, {n} edits + insert" for n in EDIT_PATTERNS]
    table = []
    for params in sizes:
        r = rows[params.avg]
        label = f"{params.avg // KIB} / {params.min // KIB} / {params.max // KIB}"
        if params == DEFAULT_PARAMS:
            label += " (default)"
        line = [label, r["mean_kib"]]
        if tree is not None:
            line += [r["seconds"], r["mbs"], r["rss"], r["files"]]
        line += [f"{r[f'delta{n}']} ({r[f'delta{n}_mib']} MiB)" for n in EDIT_PATTERNS]
        table.append(line)
    print()
    if tree is not None:
        print(
            f"import: {tree.files} files, {tree.mib:.0f} MiB, page cache warm, syncfs included,"
            f" best of {args.repeat}; chunk files = files in library/ (the tree's {tree.files}"
            " files need at least one each)"
        )
    print(
        f"delta: {args.delta_mib} MiB random file, N in-place edits of {EDIT_SIZE // KIB} KiB"
        f" + one {INSERT_SIZE // KIB} KiB insertion, mean of {args.seeds} files; new bytes ="
        " chunks of the new version missing from the old, % of the file"
    )
    print(format_table(headers, table, markdown=args.markdown))
    return 0
