"""``python -m bench distribute``: one package to one server over loopback, packdist vs rsync,
and packdist over HTTPS against packdist over plain HTTP.

packdist: a real site (``site serve``) and a real agent (``agent serve``) on 127.0.0.1; the
package is imported first (untimed); the timed command is ``packdist distribute --wait``,
from the job's creation to the agent's verified, synced, renamed tree. It runs over HTTPS
(the default of ``site serve`` and ``agent serve``: the agent given only the site's URL and
its token) and over plain HTTP (``--plain-http`` on both), each with a site of its own
holding the same package, the two modes alternating round by round (plain first in even
rounds, HTTPS first in odd ones) so that a drift of the machine's load hits both alike.
The plain-HTTP figure is the anchor of the TLS cost; ``--tls on`` or ``--tls off`` runs one
mode only.

Anchors: ``rsync -a`` from an rsync daemon on 127.0.0.1 into an empty folder, and the same
followed by ``sync -f`` on the target (like for like: packdist syncs before it reports a
version installed). Every method starts from an empty target and a warm page cache on the
source side; repeated, best time reported. ``--no-rsync`` leaves the anchors out.

Memory: each run first finds the VM's memory in the same state, ``idle`` or ``recycled``
(:mod:`bench.memory`; ``--memory both``, the default, measures every method in each).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    MIB,
    WORK_DIR,
    PackdistSetup,
    RsyncDaemon,
    Run,
    Tally,
    TreeInfo,
    fmt,
    format_table,
    generate_tree,
    read_tree,
    run_child,
    scratch,
    settle,
)
from bench.memory import STATES, set_memory

DESCRIPTION = (
    "distribute a ~1 GiB package to one server on loopback: packdist (HTTPS and plain HTTP)"
    " vs rsync daemon"
)
MODES = {"off": ["plain"], "on": ["tls"], "both": ["plain", "tls"]}
LABELS = {"plain": "packdist distribute (plain HTTP)", "tls": "packdist distribute (HTTPS)"}
RSYNC = ("rsync -a (daemon)", "rsync -a (daemon) + sync")


@dataclass
class ModeRuns:
    """A mode's setup and what its runs cost beyond the timed command: the CPU-seconds of
    the site and of the agent during each distribution, and the agent's own summary."""

    setup: PackdistSetup
    site_cpu: list[float] = field(default_factory=list)
    agent_cpu: list[float] = field(default_factory=list)
    said: list[str] = field(default_factory=list)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench distribute", description=DESCRIPTION)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--tls",
        choices=sorted(MODES),
        default="both",
        help="packdist over HTTPS (on), plain HTTP (off) or both, alternating (default)",
    )
    parser.add_argument("--no-rsync", action="store_true", help="leave the rsync anchors out")
    parser.add_argument(
        "--memory",
        choices=sorted(STATES),
        default="both",
        help="the VM's memory before each run: as an idle machine leaves it (idle), freed a"
        " moment before (recycled), or both (default; see bench/memory.py)",
    )
    args = parser.parse_args(argv)
    if not args.no_rsync and shutil.which("rsync") is None:
        print("bench distribute: rsync is not installed (make bench installs it as root)")
        return 2
    tree = generate_tree(args.size_mib)
    work = scratch(WORK_DIR, "distribute-")
    modes, states = MODES[args.tls], STATES[args.memory]
    names = [*(LABELS[m] for m in modes), *([] if args.no_rsync else RSYNC)]
    tallies = {(n, st): Tally(f"{n}, {st}") for st in states for n in names}
    setups: dict[str, PackdistSetup] = {}
    runs: dict[tuple[str, str], ModeRuns] = {}
    daemon: RsyncDaemon | None = None
    try:
        for mode in modes:
            setup = PackdistSetup(work / mode, tls=mode == "tls")
            setups[mode] = setup
            setup.create(tree.root, "1")
            setup.serve()
            for st in states:
                runs[mode, st] = ModeRuns(setup)
        if not args.no_rsync:
            daemon = RsyncDaemon({"src": tree.root}, work)
        for r in range(args.repeat):
            for st in states if r % 2 == 0 else states[::-1]:
                for mode in modes if r % 2 == 0 else modes[::-1]:
                    run = measure_packdist(tree, runs[mode, st], st)
                    tallies[LABELS[mode], st].runs.append(run)
                if daemon is not None:
                    for label in RSYNC:
                        run = measure_rsync(tree, daemon, work, r, label, st)
                        tallies[label, st].runs.append(run)
    finally:
        for setup in setups.values():
            setup.stop()
        if daemon is not None:
            daemon.stop()
    for st in states:
        report(tree, args.repeat, st, tallies, runs)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def measure_packdist(tree: TreeInfo, mode: ModeRuns, memory: str) -> Run:
    """One timed ``distribute --wait`` to a fresh agent of ``mode``'s site."""
    setup = mode.setup
    settle(tree.root, cold=False)
    read_tree(setup.site / "library")  # warm like rsync's source: packdist reads here
    name = setup.fresh_agent()
    set_memory(memory, setup.agent_home(name), tree.bytes)
    site0, agent0 = setup.cpu_seconds("site"), setup.cpu_seconds(name)
    run = setup.distribute(name, "1")
    mode.site_cpu.append(setup.cpu_seconds("site") - site0)
    mode.agent_cpu.append(setup.cpu_seconds(name) - agent0)
    mode.said.append(setup.agent_said(name, "1"))
    setup.stop_agent(name)
    shutil.rmtree(setup.agent_home(name), ignore_errors=True)
    return run


def measure_rsync(
    tree: TreeInfo, daemon: RsyncDaemon, work: Path, r: int, label: str, memory: str
) -> Run:
    synced = label.endswith("+ sync")
    settle(tree.root, cold=False)
    dest = work / f"rsync-{r}-{int(synced)}"
    dest.mkdir()
    set_memory(memory, dest, tree.bytes)
    cmd = ["rsync", "-a", daemon.url(), str(dest)]
    if synced:
        cmd = ["sh", "-c", 'rsync -a "$0" "$1" && sync -f "$1"', daemon.url(), str(dest)]
    run = run_child(cmd)
    shutil.rmtree(dest)
    return run


def report(
    tree: TreeInfo,
    repeat: int,
    memory: str,
    tallies: dict[tuple[str, str], Tally],
    runs: dict[tuple[str, str], ModeRuns],
) -> None:
    print(
        f"\none package of {tree.bytes / MIB:.0f} MiB ({tree.files} files) to one server over"
        f" loopback, memory {memory} (bench/memory.py), best of {repeat}"
    )
    mine = {name: t for (name, st), t in tallies.items() if st == memory}
    anchor, synced = mine.get(RSYNC[0]), mine.get(RSYNC[1])
    rows = []
    for name, t in mine.items():
        s = t.best.seconds
        row = [name, fmt(s, 2), fmt(tree.bytes / s / 1e6, 0)]
        if anchor and synced:
            row += [fmt(anchor.best.seconds / s, 2), fmt(synced.best.seconds / s, 2)]
        rows.append(row)
    headers = ["method", "seconds", "MB/s"]
    if anchor and synced:
        headers += ["speed vs rsync -a", "vs rsync -a + sync"]
    print(format_table(headers, rows))
    modes = [mode for mode, st in runs if st == memory]
    if len(modes) == 2:
        print(f"\nthe cost of TLS (anchor: plain HTTP), memory {memory}, best of {repeat}")
        print(format_table(*tls_cost(mine, {m: runs[m, memory] for m in modes})))
    for t in mine.values():
        print(f"  {t.name}: runs {', '.join(fmt(r.seconds, 2) for r in t.runs)} s")
    for mode in modes:
        mode_runs = runs[mode, memory]
        site = ", ".join(fmt(c, 2) for c in mode_runs.site_cpu)
        agent = ", ".join(fmt(c, 2) for c in mode_runs.agent_cpu)
        print(f"  {LABELS[mode]}: CPU-seconds of the site {site}; of the agent {agent}")
        for line in mode_runs.said:
            print(f"    agent: {line}")


def tls_cost(
    tallies: dict[str, Tally], runs: dict[str, ModeRuns]
) -> tuple[list[str], list[list[str]]]:
    """The table: each mode's best time, the site's and the agent's CPU-seconds in that
    run, and the ratio to plain HTTP's."""
    plain = tallies[LABELS["plain"]].best.seconds
    rows = []
    for mode in ("plain", "tls"):
        t, mode_runs = tallies[LABELS[mode]], runs[mode]
        best = t.runs.index(t.best)
        s = t.best.seconds
        rows.append(
            [
                "HTTPS" if mode == "tls" else "plain HTTP",
                fmt(s, 2),
                fmt(mode_runs.site_cpu[best], 2),
                fmt(mode_runs.agent_cpu[best], 2),
                f"{s / plain:.2f}x",
                f"{100 * (s / plain - 1):+.0f}%",
            ]
        )
    headers = ["transport", "seconds", "site CPU s", "agent CPU s", "vs plain", "cost"]
    return headers, rows


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
