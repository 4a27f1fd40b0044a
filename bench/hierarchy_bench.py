"""``python -m bench hierarchy``: one package to 1, 2 and 4 branch servers across a thin WAN.

A two-segment network lab (built here on tests/lab/netns.py's ``Lab``: its namespaces, lock
and clean-up). Headquarters (``hq``) sits on the WAN; the branch host (``br``) has one leg
on the WAN and one on the branch LAN; the branch servers (dp1..dp4) sit on the LAN only::

    hq 10.77.0.1 ---- WAN bridge ---- 10.77.0.2 [br] 10.77.0.129 ---- LAN bridge ---- dp1..dp4
                                    ^ capped (tc tbf, --wan-rate, both ways)        10.77.0.131..

Only br's WAN leg is capped: the LAN runs at veth speed. Three ways to install one package
on N branch servers, each on fresh homes (a new site, branch and agents per method and N)
and a fresh package per run (random bytes, a new seed: nothing is held already):

- *packdist, child site*: ``br`` runs a child site of ``hq`` (``site serve --parent``) and
  the servers are its agents; ``distribute REF --site br --wait`` at hq. br does not
  forward packets: the servers have no route to hq.
- *flat, no peers*: no site at the branch; br forwards between its legs, the servers are
  agents of hq across the WAN; ``distribute REF --to dp1..dpN --no-peers --wait``: each
  branch server pulls the package from the central site.
- *flat, peers*: the same, the servers labelled ``site=br`` and peers on (today's best flat
  layout: the servers fetch chunks from each other on the LAN as well).

Seconds: wall clock of the ``distribute --wait`` command at hq (its start included) until
it reports every server installed (verified, synced). WAN bytes: every frame both ways on
br's WAN leg during that time, from the kernel's interface counters (payload, TCP/IP
headers, heartbeats and the child's reports included). After each run every installed tree
is compared with its source (untimed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
from bench.fanout_bench import why_no_lab
from tests import harness as h
from tests.lab import netns
from tests.lab.netns import Lab, LabError, ip

DESCRIPTION = "a package to 1/2/4 branch servers over a capped WAN: child site vs flat layouts"

METHODS = {
    "child": "packdist, child site",
    "flat": "flat, no peers",
    "peers": "flat, peers",
}
BASELINE = "flat"
MAX_SERVERS = 4
PORT = 8700
AGENT_PORT = 8701
HQ, BR, BR_LAN = "10.77.0.1", "10.77.0.2", "10.77.0.129"
WAN_NET, LAN_NET = "10.77.0.0/25", "10.77.0.128/25"
LAN_BRIDGE = "pdbr1"
SMALL_FILE = 2 * MIB  # the package: one big file and this one (plus the harness's few tiny)
START_TIMEOUT = 90.0  # seconds: up to six processes starting on two cores


class BranchLab(Lab):
    """hq on the WAN bridge, br on both bridges (two legs, one namespace), the servers on the
    LAN bridge. Host ``brlan`` is br's LAN leg: its cable, in br's namespace."""

    def __init__(self, servers: list[str]) -> None:
        hosts = {"hq": HQ, "br": BR, "brlan": BR_LAN}
        hosts.update({s: f"10.77.0.{130 + i}" for i, s in enumerate(servers, 1)})
        super().__init__(hosts)

    def ns(self, host: str) -> str:  # type: ignore[override]
        return Lab.ns("br" if host == "brlan" else host)

    def _on_lan(self, host: str) -> bool:
        return host not in ("hq", "br")

    def _build(self) -> None:
        sw = netns.SWITCH_NS
        ip("netns", "add", sw)
        ip("-n", sw, "link", "set", "lo", "up")
        for bridge in (netns.BRIDGE, LAN_BRIDGE):
            ip("-n", sw, "link", "add", bridge, "type", "bridge")
            ip("-n", sw, "link", "set", bridge, "up")
        for host, addr in self.hosts.items():
            ns, inside, port = self.ns(host), self.host_veth(host), self.bridge_port(host)
            if host != "brlan":
                ip("netns", "add", ns)
                ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "add", inside, "netns", ns, "type", "veth", "peer", "name", port,
               "netns", sw)  # fmt: skip
            bridge = LAN_BRIDGE if self._on_lan(host) else netns.BRIDGE
            ip("-n", sw, "link", "set", port, "master", bridge)
            ip("-n", sw, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{addr}/25", "dev", inside)
            ip("-n", ns, "link", "set", inside, "up")
        ip("-n", self.ns("hq"), "route", "add", LAN_NET, "via", BR)
        for host in self.hosts:
            if self._on_lan(host) and host != "brlan":
                ip("-n", self.ns(host), "route", "add", WAN_NET, "via", BR_LAN)

    def forward(self, on: bool) -> None:
        """Whether br routes between its legs (flat layouts: the servers reach hq)."""
        self.exec("br", "sysctl", "-q", "-w", f"net.ipv4.ip_forward={int(on)}")

    def wan_bytes(self) -> int:
        received, sent = self.link_bytes("br")
        return received + sent


class BranchSite(h.Site):
    """The child site: one process listening on both of br's legs (hq dials the WAN address,
    the servers the LAN one; its certificate names both)."""

    @property
    def listen(self) -> str:
        return f"0.0.0.0:{self.port}"


@dataclass
class Result:
    """One measured run (or its failure)."""

    method: str
    servers: int
    package: int = 0  # bytes of the package's files
    seconds: float = 0.0
    wan: int = 0  # bytes both ways on the WAN leg
    job_sent: int = 0  # what hq's job says it sent (``bytes_sent`` of its instructions)
    error: str = ""


@dataclass
class Layout:
    """The running processes of one configuration."""

    lab: BranchLab
    hq: h.Site
    agents: dict[str, h.Agent]
    branch: h.Site | None = None

    @property
    def components(self) -> list[h.Component]:
        return [self.hq, *([self.branch] if self.branch else []), *self.agents.values()]

    def close(self) -> None:
        for c in reversed(self.components):
            c.close()

    def logs(self, lines: int = 15) -> str:
        return "\n".join(f"--- {c.name}:\n{c.log_tail(lines)}" for c in self.components)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench hierarchy", description=DESCRIPTION)
    parser.add_argument(
        "--servers",
        default="1,2,4",
        help=f"comma-separated branch server counts, each at most {MAX_SERVERS}",
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}"
    )
    parser.add_argument("--size-mib", type=int, default=32, help="package size (>= 4)")
    parser.add_argument("--wan-rate", default="50mbit", help="the WAN leg's cap (tc tbf rate)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; best time shown")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per job at most")
    args = parser.parse_args(argv)
    try:
        counts = sorted({int(n) for n in args.servers.split(",") if n.strip()})
    except ValueError:
        parser.error("--servers: comma-separated whole numbers")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not counts or not all(1 <= n <= MAX_SERVERS for n in counts):
        parser.error(f"--servers: counts between 1 and {MAX_SERVERS}")
    if not methods or any(m not in METHODS for m in methods):
        parser.error(f"--methods: choose from {', '.join(METHODS)}")
    if args.size_mib < 4 or args.repeat < 1:
        parser.error("--size-mib must be at least 4, --repeat at least 1")

    why = why_no_lab()
    if why:
        print(f"bench hierarchy: needs root and network namespaces (the network lab): {why}")
        return 2

    work = scratch(WORK_DIR, "hierarchy-")
    check_space(work, 2 * args.size_mib * MIB * (2 + max(counts)), "packages and servers")
    servers = [f"dp{i}" for i in range(1, MAX_SERVERS + 1)]
    runs = len(counts) * len(methods) * args.repeat
    results: list[Result] = []
    number = 0
    try:
        lab = BranchLab(servers)
        with lab:
            lab.shape("br", args.wan_rate)
            for n in counts:
                for method in methods:
                    layout = _start(lab, scratch(work, f"{method}-{n}-"), method, servers[:n])
                    try:
                        for _ in range(args.repeat):
                            number += 1
                            print(f"run {number}/{runs}: {METHODS[method]}, N={n} ...", flush=True)
                            result = _measure(layout, work, method, number, args)
                            print(f"  {_summary(result)}", flush=True)
                            results.append(result)
                    finally:
                        layout.close()
    except (LabError, AssertionError) as exc:
        print(f"bench hierarchy: the lab failed: {exc} (logs in {work})", file=sys.stderr)
        return 1
    if any(r.error for r in results):
        print(f"(logs kept in {work})", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    _report(results, args)
    return 1 if any(r.error for r in results) else 0


def _start(lab: BranchLab, root: Path, method: str, servers: list[str]) -> Layout:
    """Fresh homes for one configuration, every process running and seen by hq."""
    hq = h.make_site(root, "hq", home="hq", host=HQ, port=PORT, netns=lab.ns("hq"))
    hq.env["PACKDIST_RETRY_CAP"] = "5"  # a retry never waits long (none is expected)
    child = method == "child"
    lab.forward(not child)
    owner = hq
    branch: h.Site | None = None
    if child:
        branch = BranchSite(
            "br", root / "br", root / "logs", host=BR, port=PORT, netns=lab.ns("br"), site_name="br"
        ).init()
        branch.env["PACKDIST_TLS_HOSTS"] = f"{BR},{BR_LAN}"
        hq.add_child(branch)
        owner = branch
    labels = ["--label", "site=br"] if method == "peers" else []
    agents: dict[str, h.Agent] = {}
    for name in servers:
        agent = h.Agent(
            name,
            root / f"agent-{name}",
            root / "logs",
            host=lab.addr(name),
            port=AGENT_PORT,
            netns=lab.ns(name),
            site_url=f"https://{BR_LAN}:{PORT}" if child else hq.url,
            tls=owner.tls,
        )
        agent.token = str(owner.json("server", "add", name, "--url", agent.url, *labels)["token"])
        agents[name] = agent
    layout = Layout(lab, hq, agents, branch)
    try:
        h.start_all(layout.components, timeout=START_TIMEOUT)
        if child:
            h.wait_until(
                lambda: _child_servers_online(hq, servers),
                START_TIMEOUT,
                message=lambda: f"br's servers online at hq\n{layout.logs()}",
            )
        else:
            h.wait_until(
                lambda: all(hq.server_seen(s) for s in servers),
                START_TIMEOUT,
                message=lambda: f"agents enrolled at hq\n{layout.logs()}",
            )
    except BaseException:
        layout.close()
        raise
    return layout


def _child_servers_online(hq: h.Site, servers: list[str]) -> bool:
    child = hq.children().get("br")
    online = {s["name"] for s in (child or {}).get("servers", []) if s.get("online")}
    return all(f"br/{s}" in online for s in servers)


def _measure(
    layout: Layout, work: Path, method: str, number: int, args: argparse.Namespace
) -> Result:
    """Import a fresh package at hq (untimed), then install it on every branch server."""
    hq, targets = layout.hq, list(layout.agents)
    name = f"hier{number}"
    tree = h.make_tree(
        work / f"src-{name}",
        {"data/big.bin": args.size_mib * MIB - SMALL_FILE, "data/more.bin": SMALL_FILE},
        seed=1000 + number,
    )
    hq.create_package(tree, name, "1.0")
    ref = f"{name}@1.0"
    if method == "child":
        how = ["--site", "br"]
    else:
        how = ["--to", ",".join(targets), *(["--no-peers"] if method == "flat" else [])]
    result = Result(METHODS[method], len(targets), package=du_bytes(tree))
    settle(hq.home / "library", cold=False)
    time.sleep(1)  # let the heartbeats that the page-cache drop delayed go by

    before = layout.lab.wan_bytes()
    started = time.monotonic()
    proc = h.run_cli(
        hq.home, "distribute", ref, *how, "--wait", "--timeout", str(args.timeout), "--json",
        check=False, timeout=args.timeout + 60,
    )  # fmt: skip
    result.seconds = time.monotonic() - started
    result.wan = layout.lab.wan_bytes() - before

    doc = json_document(proc.stdout)
    if proc.returncode != 0 or doc is None:
        described = h.describe_job(doc) if doc else proc.stderr.strip()[-500:]
        result.error = f"distribute exited {proc.returncode}: {described}"
    else:
        result.job_sent = sum(int(i["bytes_sent"]) for i in doc["instructions"])
        for t in targets:
            problems = h.tree_differences(tree, layout.agents[t].package_dir(name, "1.0"))
            if problems:
                result.error = f"{t} holds a wrong tree: {problems[:3]}"
                break
    if result.error:
        print(layout.logs(), file=sys.stderr)
    shutil.rmtree(tree, ignore_errors=True)
    return result


def _summary(r: Result) -> str:
    if r.error:
        return f"FAILED after {r.seconds:.1f}s: {r.error}"
    return (
        f"{r.seconds:.2f}s, WAN {r.wan / MIB:.1f} MiB ({r.wan / r.package:.2f}x the package),"
        f" hq's job says {r.job_sent / MIB:.1f} MiB sent"
    )


def _report(results: list[Result], args: argparse.Namespace) -> None:
    if not results:
        return
    package = max(r.package for r in results)
    best: dict[tuple[str, int], Result] = {}
    for r in results:  # per row the fastest run that worked (a failed one if none did)
        key = (r.method, r.servers)
        if key not in best or (bool(best[key].error), best[key].seconds) > (
            bool(r.error),
            r.seconds,
        ):
            best[key] = r
    order = list(METHODS.values())
    rows: list[list[object]] = []
    for r in sorted(best.values(), key=lambda r: (r.servers, order.index(r.method))):
        if r.error:
            rows.append([r.servers, r.method, "failed", "-", "-", "-"])
            continue
        base = best.get((METHODS[BASELINE], r.servers))
        speedup = f"{base.seconds / r.seconds:.2f}x" if base and not base.error else "-"
        rows.append(
            [
                r.servers,
                r.method,
                fmt(r.seconds, 2),
                fmt(r.wan / MIB, 1),
                f"{r.wan / package:.2f}x",
                speedup,
            ]
        )
    rate = _bits_per_second(args.wan_rate)
    line_rate = f" One package copy at the WAN's rate: {package * 8 / rate:.2f}s." if rate else ""
    best_of = f", best of {args.repeat}" if args.repeat > 1 else ""
    print(
        f"\none {package / MIB:.1f} MiB package (random bytes, new each run) to N branch"
        f" servers, the WAN capped at {args.wan_rate} both ways (tc tbf){best_of}"
    )
    headers = ["servers", "method", "seconds", "WAN MiB", "WAN / package", "speed-up"]
    print(format_table(headers, rows))
    print(
        "\nseconds: distribute --wait at hq, start to every server installed (verified, synced);"
        "\nWAN MiB: bytes both ways on the branch's WAN leg (kernel counters: frames, headers,"
        " heartbeats\nand reports included); WAN / package: WAN bytes / package size;"
        f" speed-up: time of {METHODS[BASELINE]} / time,\nsame N.{line_rate}"
    )


def _bits_per_second(rate: str) -> float:
    """``tc``'s rate (``50mbit``, ``1gbit``, ``800kbit``) in bits/s; 0 if not understood."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}
    for unit, factor in units.items():
        if rate.lower().endswith(unit):
            try:
                return float(rate[: -len(unit)]) * factor
            except ValueError:
                return 0.0
    return 0.0
