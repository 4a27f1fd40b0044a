"""``python -m bench distribute``: one package to one server over loopback, packdist vs rsync.

packdist: a real site (``site serve``) and a real agent (``agent serve``) on 127.0.0.1; the
package is imported first (untimed); the timed command is ``packdist distribute --wait``,
from the job's creation to the agent's verified, synced, renamed tree.

Anchors: ``rsync -a`` from an rsync daemon on 127.0.0.1 into an empty folder, and the same
followed by ``sync -f`` on the target (like for like: packdist syncs before it reports a
version installed). Every method starts from an empty target and a warm page cache on the
source side; repeated, best time reported.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from bench.common import (
    MIB,
    WORK_DIR,
    PackdistSetup,
    RsyncDaemon,
    Tally,
    fmt,
    format_table,
    generate_tree,
    read_tree,
    run_child,
    scratch,
    settle,
)

DESCRIPTION = "distribute a ~1 GiB package to one server on loopback: packdist vs rsync daemon"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench distribute", description=DESCRIPTION)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    if shutil.which("rsync") is None:
        print("bench distribute: rsync is not installed (make bench installs it as root)")
        return 2
    tree = generate_tree(args.size_mib)
    work = scratch(WORK_DIR, "distribute-")
    tallies = {
        n: Tally(n)
        for n in ("packdist distribute", "rsync -a (daemon)", "rsync -a (daemon) + sync")
    }
    said: list[str] = []
    setup = PackdistSetup(work)
    setup.create(tree.root, "1")
    setup.serve()
    daemon = RsyncDaemon({"src": tree.root}, work)
    try:
        for r in range(args.repeat):
            settle(tree.root, cold=False)
            read_tree(setup.site / "library")  # warm like rsync's source: packdist reads here
            name = setup.fresh_agent()
            tallies["packdist distribute"].runs.append(setup.distribute(name, "1"))
            said.append(setup.agent_said(name, "1"))
            for label, synced in (("rsync -a (daemon)", False), ("rsync -a (daemon) + sync", True)):
                settle(tree.root, cold=False)
                dest = work / f"rsync-{r}-{int(synced)}"
                dest.mkdir()
                cmd = ["rsync", "-a", daemon.url(), str(dest)]
                if synced:
                    cmd = [
                        "sh",
                        "-c",
                        'rsync -a "$0" "$1" && sync -f "$1"',
                        daemon.url(),
                        str(dest),
                    ]
                tallies[label].runs.append(run_child(cmd))
                shutil.rmtree(dest)
            setup.stop_agent(name)
            shutil.rmtree(setup.agent_home(name), ignore_errors=True)
    finally:
        setup.stop()
        daemon.stop()
    base = tallies["rsync -a (daemon)"].best.seconds
    rows = []
    for t in tallies.values():
        s = t.best.seconds
        rows.append([t.name, fmt(s, 2), fmt(tree.bytes / s / 1e6, 0), fmt(base / s, 2)])
    print(
        f"\none package of {tree.bytes / MIB:.0f} MiB ({tree.files} files) to one server over"
        f" loopback, best of {args.repeat}"
    )
    print(format_table(["method", "seconds", "MB/s", "speed vs rsync -a"], rows))
    for t in tallies.values():
        print(f"  {t.name}: runs {', '.join(fmt(r.seconds, 2) for r in t.runs)} s")
    for line in said:
        print(f"  agent: {line}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
