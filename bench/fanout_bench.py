"""``python -m bench fanout``: one package to 1, 4 and 12 servers behind slow cables.

The network lab of the lab tests (tests/lab/netns.py): the site and every distribution
server (dp1..dp12) run in network namespaces of their own, cabled to one bridge, and every
cable is capped at 100 Mbit/s both ways with ``tc tbf`` (``--rate-mbit``). The site and the
agents are real ``packdist`` processes (``site serve``, ``agent serve``), started once.

Each measured run imports a fresh 32 MiB package of random bytes (untimed; a new seed each
run, so no server already holds any of it), then distributes it with one of three methods:

- *packdist (peers)*: one job, ``distribute REF --to dp1..dpN --wait``; the site tells each
  agent which peers to fetch chunks from as well.
- *parallel push*: the same with ``--no-peers``: every server fetches only from the site, all
  at once.
- *sequential push*: ``--no-peers``, one job per server in turn, each waited for (the naive
  push: the site to each server in turn).

Time: wall clock from just before the first ``distribute`` command (its start included, as
in ``bench distribute``) until the last job reports every target installed (verified,
synced, renamed). Site bytes: what the site's cable sent during that time, from the
kernel's counters on its veth (frames: payload, TCP/IP headers, heartbeat answers). Before
each run every dirty page is written back, the page cache dropped and the site's library
read once. After it, every installed tree is compared with its source (untimed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# ``python -m bench`` runs from the repository root, which puts it on sys.path: ``tests`` is
# importable like ``bench`` itself.
from bench.common import (
    MIB,
    WORK_DIR,
    check_space,
    du_bytes,
    fmt,
    format_table,
    json_document,
    scratch,
    settle,
)
from tests import harness as h
from tests.conftest import have_root_and_netns
from tests.lab.netns import Lab, LabError, netns_supported

DESCRIPTION = "a 32 MiB package to 1/4/12 servers on 100 Mbit/s lab cables: peers vs pushes"

METHODS = {
    "packdist": "packdist (peers)",
    "parallel": "parallel push",
    "sequential": "sequential push",
}
MAX_SERVERS = 12
SITE_PORT = 8700
AGENT_PORT = 8701
SMALL_FILE = 6 * MIB  # the package: one big file and this one (plus the harness's few tiny)


@dataclass
class Result:
    """One measured run (or its failure)."""

    method: str
    servers: int
    package: int = 0  # bytes of the package's files
    seconds: float = 0.0
    site_sent: int = 0
    received: int = 0  # chunk bytes the servers got (the jobs' ``bytes_sent``)
    from_peers: int = 0  # ... of which from peers
    error: str = ""


def why_no_lab() -> str | None:
    """Why the lab cannot be built here (None if it can)."""
    why = have_root_and_netns()
    if why is None and shutil.which("tc") is None:
        why = "the lab needs iproute2's 'tc' command (cables are shaped with tc tbf)"
    return why or netns_supported()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fanout", description=DESCRIPTION)
    parser.add_argument(
        "--servers",
        default="1,4,12",
        help="comma-separated server counts N, each at most 12 (default 1,4,12)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated, of {', '.join(METHODS)} (default all)",
    )
    parser.add_argument("--rate-mbit", type=int, default=100, help="every cable's cap")
    parser.add_argument("--size-mib", type=int, default=32, help="package size (>= 8)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; best time shown")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per job at most")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, site)")
    args = parser.parse_args(argv)
    counts = sorted({int(n) for n in args.servers.split(",") if n.strip()})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not counts or not all(1 <= n <= MAX_SERVERS for n in counts):
        parser.error(f"--servers: counts between 1 and {MAX_SERVERS}")
    if not methods or any(m not in METHODS for m in methods):
        parser.error(f"--methods: choose from {', '.join(METHODS)}")
    if args.size_mib < 8 or args.repeat < 1 or args.rate_mbit < 1:
        parser.error("--size-mib must be at least 8, --repeat and --rate-mbit at least 1")

    why = why_no_lab()
    if why:
        print(f"bench fanout: needs root and network namespaces (the network lab): {why}")
        return 2

    work = scratch(WORK_DIR, "fanout-")
    runs = len(counts) * len(methods) * args.repeat
    check_space(work, runs * args.size_mib * MIB * (1 + max(counts)), "packages and servers")
    servers = [f"dp{i}" for i in range(1, max(counts) + 1)]
    hosts = {"site": "10.77.0.1", **{s: f"10.77.0.{10 + i}" for i, s in enumerate(servers, 1)}}
    results: list[Result] = []
    try:
        with Lab(hosts) as lab:
            for host in hosts:
                lab.shape(host, f"{args.rate_mbit}mbit")
            site, agents = _start(lab, work, servers)
            cluster = h.Cluster(site, agents)
            try:
                number = 0
                for n in counts:
                    for method in methods:
                        for _ in range(args.repeat):
                            number += 1
                            print(f"run {number}/{runs}: {METHODS[method]}, N={n} ...", flush=True)
                            result = _measure(lab, cluster, work, method, servers[:n], number, args)
                            print(f"  {_summary(result)}", flush=True)
                            results.append(result)
            finally:
                cluster.close()
    except LabError as exc:
        print(f"bench fanout: the lab failed: {exc} (logs in {work})", file=sys.stderr)
        return 1
    if args.keep:
        print(f"kept {work} (the site's and the agents' logs)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    _report(results, args, len(servers))
    return 1 if any(r.error for r in results) else 0


def _start(lab: Lab, work: Path, servers: list[str]) -> tuple[h.Site, dict[str, h.Agent]]:
    """The site and one agent per server, each in its namespace, running and enrolled."""
    cluster = h.start_lab_cluster(lab, work, servers, SITE_PORT, AGENT_PORT)
    return cluster.site, cluster.agents


def _measure(
    lab: Lab,
    cluster: h.Cluster,
    work: Path,
    method: str,
    targets: list[str],
    number: int,
    args: argparse.Namespace,
) -> Result:
    """Import a fresh package (untimed), then distribute it to ``targets`` with ``method``."""
    site = cluster.site
    name = f"fan{number}"
    big = args.size_mib * MIB - SMALL_FILE
    tree = h.make_tree(
        work / f"src-{name}", {"data/big.bin": big, "data/more.bin": SMALL_FILE}, seed=number
    )
    site.create_package(tree, name, "1.0")
    ref = f"{name}@1.0"
    batches = [[t] for t in targets] if method == "sequential" else [targets]
    extra = [] if method == "packdist" else ["--no-peers"]
    result = Result(METHODS[method], len(targets), package=du_bytes(tree))
    settle(site.home / "library", cold=False)
    time.sleep(1)  # let the heartbeats that the page-cache drop delayed go by

    _, sent_before = lab.link_bytes("site")
    started = time.monotonic()
    for batch in batches:
        proc = h.run_cli(
            site.home,
            "distribute",
            ref,
            "--to",
            ",".join(batch),
            *extra,
            "--wait",
            "--timeout",
            str(args.timeout),
            "--json",
            check=False,
            timeout=args.timeout + 60,
        )
        doc = json_document(proc.stdout)
        if proc.returncode != 0 or doc is None:
            described = h.describe_job(doc) if doc else proc.stderr.strip()[-500:]
            result.error = f"distribute exited {proc.returncode}: {described}"
            break
        for i in doc["instructions"]:
            result.received += int(i["bytes_sent"])
            result.from_peers += int(i.get("bytes_from_peers", 0))
    result.seconds = time.monotonic() - started
    _, sent_after = lab.link_bytes("site")
    result.site_sent = sent_after - sent_before

    if not result.error:
        for t in targets:
            problems = h.tree_differences(tree, cluster.agents[t].package_dir(name, "1.0"))
            if problems:
                result.error = f"{t} holds a wrong tree: {problems[:3]}"
                break
    if result.error:
        print(cluster.dump_logs(15), file=sys.stderr)
    shutil.rmtree(tree, ignore_errors=True)
    return result


def _summary(r: Result) -> str:
    if r.error:
        return f"FAILED after {r.seconds:.1f}s: {r.error}"
    return f"{r.seconds:.2f}s, site sent {r.site_sent / MIB:.1f} MiB"


def _report(results: list[Result], args: argparse.Namespace, most: int) -> None:
    package = max(r.package for r in results)
    best: dict[tuple[str, int], Result] = {}
    for r in results:  # per row the fastest run that worked (a failed one if none did)
        key = (r.method, r.servers)
        if key not in best or (bool(best[key].error), best[key].seconds) > (
            bool(r.error),
            r.seconds,
        ):
            best[key] = r
    base = best.get((METHODS["packdist"], 1))
    order = list(METHODS.values())
    rows: list[list[object]] = []
    for r in sorted(best.values(), key=lambda r: (order.index(r.method), r.servers)):
        if r.error:
            rows.append([r.method, r.servers, "failed", "-", "-", "-", "-"])
            continue
        relative = fmt(r.seconds / base.seconds, 2) if base and not base.error else "-"
        share = f"{100 * r.from_peers / r.received:.0f}%" if r.received else "-"
        rows.append(
            [
                r.method,
                r.servers,
                fmt(r.seconds, 2),
                fmt(r.site_sent / MIB, 1),
                fmt(r.site_sent / package, 2),
                relative,
                share,
            ]
        )
    line_rate = package * 8 / (args.rate_mbit * 1e6)
    best_of = f", best of {args.repeat}" if args.repeat > 1 else ""
    print(
        f"\none {package / MIB:.1f} MiB package (random bytes, new each run) to N of {most}"
        f" servers, every cable {args.rate_mbit} Mbit/s both ways (tc tbf){best_of}"
    )
    print(
        format_table(
            [
                "method",
                "N",
                "seconds",
                "site MiB",
                "x package",
                "time vs packdist N=1",
                "from peers",
            ],
            rows,
        )
    )
    print(
        "\nseconds: first distribute command started -> every target installed (verified,"
        " synced);\nsite MiB: bytes sent on the site's cable (kernel counters: frames, headers"
        " included);\nx package: site MiB / package size; from peers: share of the chunk bytes"
        " the servers got\nthat came from peers (job show). One package copy at line rate:"
        f" {line_rate:.2f}s."
    )
