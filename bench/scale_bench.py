"""``python -m bench scale``: one real site against many simulated servers (issue 12).

A fresh site home in a temporary folder (SQLite, or a throwaway PostgreSQL cluster), N
servers registered in bulk on its store (setup, not measured), one small package, K real
``site serve`` processes on 127.0.0.1, and N simulated agents in ONE other process
(:mod:`bench.simagents`). Then, in order:

1. heartbeats only, for ``--duration`` seconds: the site's CPU (``/proc/PID/stat``, summed
   over workers, in % of one core) and the latency the agents see;
2. ``packdist distribute NAME@V --all --json`` (wall time, start-up included), then until
   every instruction is terminal (read from the store every 0.25 s): completion time and
   instructions per second, heartbeats meanwhile;
3. ``job show``, ``status`` (CLI wall times) and ``GET /api/overview`` (operator bearer);
4. the site's resident memory (highest sample), tracebacks in its log.

The simulator's own CPU is reported (``sim_cpu_pct``, one core is 100): when it nears a
whole core the agents are the bottleneck and the figures say more about them than about the
site; the output then says so (``trustworthy: false``), as it does when other processes on
the machine took much CPU during a window (``other_cpu_pct``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import ChildFailed, format_table, packdist_argv, run_child
from bench.scale_fleet import CpuWindow, Fleet

DESCRIPTION = "one real site, N simulated agents: heartbeat cost, job throughput, views (issue 12)"

TERMINAL = ("installed", "failed", "cancelled", "removed")
SIM_SATURATED = 85.0  # % of one core: above it the simulator, not the site, sets the pace
OTHERS_BUSY = 40.0  # % of one core used by other processes: the machine was not ours
POLL = 0.25
BACK_TO_NORMAL_WAIT = 90.0  # seconds given to every agent to heartbeat normally after a job


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench scale", description=DESCRIPTION)
    p.add_argument("--servers", type=int, default=100, help="simulated servers (default 100)")
    p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--workers", type=int, default=1, help="site serve processes (PostgreSQL)")
    p.add_argument("--install-delay", type=float, default=0.0, help="seconds an install takes")
    p.add_argument("--fail-pct", type=float, default=0.0, help="%% of attempts failing (transient)")
    p.add_argument("--duration", type=float, default=10.0, help="heartbeat-only window (s)")
    p.add_argument(
        "--keepalive",
        action="store_true",
        help="agents keep one connection to the site open (today's agent opens one per call)",
    )
    p.add_argument("--job-timeout", type=float, default=300.0, help="give up on the job after")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, home)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument(
        "--sim-procs",
        type=int,
        default=0,
        help="simulator processes, each with a slice of the agents (default: one per 5,000)",
    )
    args = p.parse_args(argv)
    if args.sim_procs == 0:
        args.sim_procs = max(1, min(os.cpu_count() or 1, -(-args.servers // 5000)))
    problems = [
        "--servers must be at least 1" if args.servers < 1 else "",
        "--workers must be at least 1" if args.workers < 1 else "",
        "--workers above 1 needs --store postgresql (SQLite has one writer)"
        if args.workers > 1 and args.store == "sqlite"
        else "",
        "--fail-pct must be from 0 to 100" if not 0 <= args.fail_pct <= 100 else "",
        "--install-delay must not be negative" if args.install_delay < 0 else "",
        "--duration must be positive" if args.duration <= 0 else "",
        "--sim-procs must be at least 1" if args.sim_procs < 1 else "",
    ]
    for problem in problems:
        if problem:
            p.error(problem)
    return args


# --------------------------------------------------------------------------- measuring


def measure(fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    from packdist.agent.server import HEARTBEAT_INTERVAL

    out: dict[str, Any] = {
        "servers": args.servers,
        "store": args.store,
        "workers": args.workers,
        "install_delay_s": args.install_delay,
        "fail_pct": args.fail_pct,
        "heartbeat_connections": "kept" if args.keepalive else "fresh",
        "sim_procs": args.sim_procs,
    }
    pids, sims = [p.pid for p in fleet.sites], [p.pid for p in fleet.sims]
    out["enrolled"] = fleet.wait_enrolled(60 + args.servers / 50)
    time.sleep(2 * HEARTBEAT_INTERVAL + 1)  # every agent past its first, spread heartbeat
    peak_rss = fleet.rss()

    fleet.sim_call("/_sim/window", "POST")  # 1. heartbeats only
    cpu = CpuWindow(pids, sims, fleet.db_pid())
    time.sleep(args.duration)
    used = cpu.close()
    beats = fleet.sim_call("/_sim/stats")
    interval = beats.get("heartbeat_interval_p50_s") or HEARTBEAT_INTERVAL
    peak_rss = max(peak_rss, fleet.rss())
    out |= {
        "duration_s": args.duration,
        "heartbeat_cpu_pct": used["site_cpu_pct"],
        "heartbeat_db_cpu_pct": used["db_cpu_pct"],
        # at the interval the site gave (agents ask again sooner after a failure)
        "heartbeat_interval_s": interval,
        "heartbeats_due_per_s": args.servers / interval,
        "heartbeats_shed": beats.get("heartbeats_shed", 0),
        "heartbeats_per_s": beats["heartbeats_ok"] / beats["seconds"],
        "heartbeats_ok": beats["heartbeats_ok"],
        "heartbeats_failed": beats["heartbeats_failed"],
        "heartbeat_failures": beats["heartbeat_failures"],
        "heartbeat_p50_ms": beats["heartbeat_p50_ms"],
        "heartbeat_p99_ms": beats["heartbeat_p99_ms"],
        "heartbeat_max_ms": beats["heartbeat_max_ms"],
        "sim_cpu_pct": used["sim_cpu_pct"],
        "sim_busiest_cpu_pct": used["sim_busiest_cpu_pct"],
        "sim_loop_lag_p99_ms": beats["loop_lag_p99_ms"],
        "other_cpu_pct": used["other_cpu_pct"],
    }

    fleet.sim_call("/_sim/window", "POST")  # 2. one job to every server
    cpu = CpuWindow(pids, sims, fleet.db_pid())
    started = time.monotonic()
    created = run_child(
        packdist_argv("--home", fleet.home, "distribute", "scale@1", "--all", "--json")
    )
    job = json.loads(created.stdout)["job"]
    in_store = time.monotonic()  # the command returned: the job is in the store
    first_claimed = first_installed = done_at = None
    counts: dict[str, int] = {}
    while time.monotonic() - started < args.job_timeout:
        counts = fleet.counts(job)
        if first_claimed is None and sum(counts.values()) > counts.get("pending", 0):
            first_claimed = time.monotonic() - in_store
        if first_installed is None and counts.get("installed"):
            first_installed = time.monotonic() - started
        if sum(counts.get(s, 0) for s in TERMINAL) >= args.servers:
            done_at = time.monotonic() - started
            break
        peak_rss = max(peak_rss, fleet.rss())
        time.sleep(POLL)
    used = cpu.close()
    during = fleet.sim_call("/_sim/stats")
    out |= {
        "job_create_s": created.seconds,
        # from the job in the store to its first instruction claimed (within POLL)
        "job_start_s": first_claimed,
        "first_install_s": first_installed,
        "job_complete_s": done_at,  # None: not complete within --job-timeout
        "instructions": sum(counts.values()),
        "instructions_by_state": counts,
        "instructions_per_s": counts.get("installed", 0) / (done_at or args.job_timeout),
        # the pace once the first install landed (job creation and the first claim left out)
        "steady_instructions_per_s": (counts.get("installed", 0) - 1)
        / max((done_at or args.job_timeout) - (first_installed or 0.0), 1e-9)
        if first_installed is not None
        else 0.0,
        "install_calls": during.get("install_calls", 0),
        "installs_failing": during.get("installs_failing", 0),
        "status_calls": during.get("status_calls", 0),
        "job_site_cpu_pct": used["site_cpu_pct"],
        "job_db_cpu_pct": used["db_cpu_pct"],
        "job_sim_cpu_pct": used["sim_cpu_pct"],
        "job_sim_busiest_cpu_pct": used["sim_busiest_cpu_pct"],
        "job_other_cpu_pct": used["other_cpu_pct"],
        "job_heartbeat_p99_ms": during["heartbeat_p99_ms"],
        "job_heartbeats_failed": during["heartbeats_failed"],
        "job_heartbeats_shed": during.get("heartbeats_shed", 0),
        "job_heartbeat_failures": during["heartbeat_failures"],
    }

    home = ["--home", str(fleet.home)]  # 3. what operators look at, with the job in the store
    out["job_show_s"] = run_child(packdist_argv(*home, "job", "show", job, "--json")).seconds
    out["status_s"] = run_child(packdist_argv(*home, "status", "--json")).seconds
    out["cli_floor_s"] = run_child(packdist_argv(*home, "package", "list", "--json")).seconds
    req = urllib.request.Request(
        f"{fleet.site_urls[0]}/api/overview", headers={"Authorization": f"Bearer {fleet.password}"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        body = resp.read()
    out["overview_s"] = time.perf_counter() - t0
    out["overview_bytes"] = len(body)

    # 4. once the job is done (the load drops): how long until every agent's last
    # heartbeat was answered, not shed nor failed
    settled = time.monotonic()
    out["back_to_normal_s"] = None
    while time.monotonic() - settled < BACK_TO_NORMAL_WAIT:
        if fleet.sim_call("/_sim/stats").get("agents_normal", 0) >= args.servers:
            out["back_to_normal_s"] = time.monotonic() - settled
            break
        time.sleep(1.0)
    out["site_rss_mb"] = max(peak_rss, fleet.rss())  # 5. memory, logs, the simulator's word
    out["site_tracebacks"], out["site_log_top"] = fleet.site_log_problems()
    sim_stats = fleet.sim_call("/_sim/stats")
    out["sim_errors"] = sim_stats["errors"]
    out["agents_by_last_heartbeat"] = sim_stats.get("agents_by_last", {})
    warnings = []
    if out["back_to_normal_s"] is None:
        warnings.append(f"not every agent back to normal heartbeats in {BACK_TO_NORMAL_WAIT:g}s")
    if out["enrolled"] < args.servers:
        warnings.append(f"only {out['enrolled']} of {args.servers} servers enrolled")
    for key in ("sim_busiest_cpu_pct", "job_sim_busiest_cpu_pct"):
        if out[key] > SIM_SATURATED:
            warnings.append(f"a simulator used {out[key]:.0f}% of a core ({key}): saturated")
    for key in ("other_cpu_pct", "job_other_cpu_pct"):
        if out[key] > OTHERS_BUSY:
            warnings.append(f"other processes used {out[key]:.0f}% of a core ({key})")
    out["trustworthy"] = not warnings
    out["warnings"] = warnings
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out["machine"] = f"{os.cpu_count()} cores, {_cpu_model()}"
    return out


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


TABLE = [
    ("servers", "servers", "{:,}"),
    ("heartbeats/s ok / due", ("heartbeats_per_s", "heartbeats_due_per_s"), "{:,.0f}"),
    ("heartbeat CPU, site (% of a core)", "heartbeat_cpu_pct", "{:.1f}"),
    ("heartbeat p50 / p99 (ms)", ("heartbeat_p50_ms", "heartbeat_p99_ms"), "{:.1f}"),
    ("heartbeats failed / shed (503)", ("heartbeats_failed", "heartbeats_shed"), "{:,}"),
    ("heartbeat interval the site gave (s)", "heartbeat_interval_s", "{:.1f}"),
    ("job created (s)", "job_create_s", "{:.2f}"),
    ("job started: first instruction claimed (s)", "job_start_s", "{:.2f}"),
    ("first install (s)", "first_install_s", "{:.2f}"),
    ("job complete (s)", "job_complete_s", "{:.2f}"),
    ("instructions/s", "instructions_per_s", "{:,.1f}"),
    ("steady instructions/s (after the first)", "steady_instructions_per_s", "{:,.1f}"),
    ("site CPU during job (%)", "job_site_cpu_pct", "{:.1f}"),
    ("PostgreSQL CPU, heartbeats / job (%)", ("heartbeat_db_cpu_pct", "job_db_cpu_pct"), "{:.1f}"),
    ("heartbeat p99 during job (ms)", "job_heartbeat_p99_ms", "{:.1f}"),
    ("every agent back to normal heartbeats after (s)", "back_to_normal_s", "{:.1f}"),
    ("job show (s)", "job_show_s", "{:.2f}"),
    ("status (s)", "status_s", "{:.2f}"),
    ("overview (s)", "overview_s", "{:.2f}"),
    ("CLI floor: package list (s)", "cli_floor_s", "{:.2f}"),
    ("site RSS (MB)", "site_rss_mb", "{:.0f}"),
    ("site tracebacks", "site_tracebacks", "{:,}"),
    ("simulator CPU, heartbeats / job (%)", ("sim_cpu_pct", "job_sim_cpu_pct"), "{:.1f}"),
    ("other processes' CPU (%)", ("other_cpu_pct", "job_other_cpu_pct"), "{:.1f}"),
]


def table(doc: dict[str, Any]) -> str:
    rows = []
    for label, keys, spec in TABLE:
        values = [doc.get(k) for k in (keys if isinstance(keys, tuple) else (keys,))]
        rows.append([label, " / ".join("-" if v is None else spec.format(v) for v in values)])
    head = (
        f"bench scale: {doc['store']}, {doc['workers']} worker(s), {doc['date']}, {doc['machine']}"
    )
    lines = [head, format_table(["measure", "value"], rows)]
    lines += [f"WARNING: {w} - the figures are not trustworthy" for w in doc["warnings"]]
    lines += [f"site log: {e}" for e in doc["site_log_top"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    fleet = Fleet(args)
    try:
        fleet.setup()
        doc = measure(fleet, args)
    except ChildFailed as exc:
        print(f"bench scale: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"bench scale: work folder kept: {fleet.work}", file=sys.stderr)
        fleet.close()
    print(json.dumps(doc, indent=2) if args.json else table(doc))
    return 0
