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
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    ChildFailed,
    _terminate,
    format_table,
    free_port,
    packdist_argv,
    run_child,
    run_quiet,
    scratch,
    wait_healthy,
)

DESCRIPTION = "one real site, N simulated agents: heartbeat cost, job throughput, views (issue 12)"

TERMINAL = ("installed", "failed", "cancelled", "removed")
SIM_SATURATED = 85.0  # % of one core: above it the simulator, not the site, sets the pace
OTHERS_BUSY = 40.0  # % of one core used by other processes: the machine was not ours
POLL = 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
    args = p.parse_args(argv)
    problems = [
        "--servers must be at least 1" if args.servers < 1 else "",
        "--workers must be at least 1" if args.workers < 1 else "",
        "--workers above 1 needs --store postgresql (SQLite has one writer)"
        if args.workers > 1 and args.store == "sqlite"
        else "",
        "--fail-pct must be from 0 to 100" if not 0 <= args.fail_pct <= 100 else "",
        "--install-delay must not be negative" if args.install_delay < 0 else "",
        "--duration must be positive" if args.duration <= 0 else "",
    ]
    for problem in problems:
        if problem:
            p.error(problem)
    return args


# ------------------------------------------------------------------------- /proc readings


def _stat(pid: int | str) -> list[str]:
    """``/proc/PID/stat`` from its third field (state) on."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (every thread), in seconds."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a server and its children (PostgreSQL's postmaster and backends): the
    live ones, and those it has reaped (their time is in its cutime and cstime)."""
    fields = _stat(pid)
    total = sum(int(x) for x in fields[11:15])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                child = _stat(entry.name)
            except OSError:
                continue
            if int(child[1]) == pid:
                total += int(child[11]) + int(child[12])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time every core spent not idle, since boot."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _own_cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class CpuWindow:
    """CPU used by the site, the simulator and everything else over one stretch of time."""

    def __init__(self, sites: list[int], sim: int, db: int | None) -> None:
        self.sites, self.sim, self.db = sites, sim, db
        self.started = time.monotonic()
        self.site0 = sum(cpu_seconds(p) for p in sites)
        self.sim0 = cpu_seconds(sim)
        self.db0 = tree_cpu_seconds(db) if db else 0.0
        self.me0 = _own_cpu()
        self.all0 = machine_busy_seconds()

    def close(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-9)
        site = sum(cpu_seconds(p) for p in self.sites) - self.site0
        sim = cpu_seconds(self.sim) - self.sim0
        db = tree_cpu_seconds(self.db) - self.db0 if self.db else 0.0
        me = _own_cpu() - self.me0  # with the CLI commands it ran
        other = machine_busy_seconds() - self.all0 - site - sim - db - me
        return {
            "site_cpu_pct": 100 * site / wall,
            "sim_cpu_pct": 100 * sim / wall,
            "db_cpu_pct": 100 * db / wall,
            "other_cpu_pct": max(0.0, 100 * other / wall),
        }


# ---------------------------------------------------------------------------- the fleet


class Fleet:
    """The site's home, its workers and the simulated agents; :meth:`close` ends them all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = scratch(prefix="scale-")
        self.home = self.work / "site"
        self.cluster: Any = None
        self.store_url: str | None = None
        self.sites: list[subprocess.Popen[bytes]] = []
        self.site_urls: list[str] = []
        self.sim: subprocess.Popen[bytes] | None = None
        self.sim_url = ""
        self.password = ""

    def setup(self) -> None:
        if self.args.store == "postgresql":
            sys.path.insert(0, str(REPO))
            from tests import pgcluster

            why = pgcluster.missing_reason()
            if why:
                raise SystemExit(f"bench scale: --store postgresql: {why}")
            self.cluster = pgcluster.Cluster()
            self.cluster.start()
            self.store_url = self.cluster.new_database()
        init = ["--home", str(self.home), "site", "init", "--name", "scale", "--json"]
        if self.store_url:
            init += ["--store", self.store_url]
        self.password = json.loads(run_quiet(packdist_argv(*init)))["operator_password"]
        sim_port = free_port()
        self.sim_url = f"http://127.0.0.1:{sim_port}"
        agents = self._register(self.args.servers)
        source = self.work / "src"
        (source / "bin").mkdir(parents=True)
        (source / "bin" / "tool").write_bytes(b"#!/bin/sh\necho scale\n" * 200)
        (source / "README").write_bytes(os.urandom(20_000))
        create = ["package", "create", str(source), "--name", "scale", "--version", "1"]
        run_quiet(packdist_argv("--home", self.home, *create))
        for k in range(self.args.workers):
            self.site_urls.append(self._start_site(k))
        config = self.work / "sim.json"  # holds the tokens: the owner's alone
        config.touch(mode=0o600)
        config.write_text(
            json.dumps(
                {
                    "port": sim_port,
                    "sites": self.site_urls,
                    "agents": agents,
                    "install_delay": self.args.install_delay,
                    "fail_pct": self.args.fail_pct,
                    "keepalive": self.args.keepalive,
                    "max_seconds": self.args.duration + self.args.job_timeout + 600,
                }
            )
        )
        with open(self.work / "sim.log", "ab") as out:
            self.sim = subprocess.Popen(
                [sys.executable, "-m", "bench.simagents", str(config)],
                stdout=out,
                stderr=out,
                cwd=REPO,
            )

    def _register(self, n: int) -> list[tuple[str, str]]:
        """N servers on the site's store in one transaction; their names and tokens."""
        from packdist.auth import hash_token, new_token
        from packdist.service import Service
        from packdist.site.home import SiteHome

        store = SiteHome.open(self.home).store()
        agents = [(f"sim{i:05d}", new_token()) for i in range(n)]
        now = time.time()
        try:
            with store.transaction():
                service = Service(store)
                for name, token in agents:
                    url = f"{self.sim_url}/s/{name}"
                    service.add_server(name, url, hash_token(token), [], {}, now)
        finally:
            store.close()
        return agents

    def _start_site(self, k: int) -> str:
        url = f"http://127.0.0.1:{free_port()}"
        log = self.work / f"site-{k}.log"
        argv = packdist_argv("--home", self.home, "site", "serve", "--listen", url[7:])
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out)
        self.sites.append(proc)
        wait_healthy(url, proc, log)
        return url

    def sim_call(self, path: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(f"{self.sim_url}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc

    def wait_enrolled(self, limit: float) -> int:
        deadline = time.monotonic() + limit
        enrolled = 0
        while time.monotonic() < deadline:
            assert self.sim is not None
            if self.sim.poll() is not None:
                raise ChildFailed(f"simulator exited: {self.tail('sim.log')}")
            try:
                enrolled = int(self.sim_call("/_sim/stats")["enrolled"])
            except OSError:
                pass
            if enrolled >= self.args.servers:
                break
            time.sleep(0.5)
        return enrolled

    def counts(self, job: str) -> dict[str, int]:
        """Instructions of the job by state, read from the store (not through the site)."""
        sql = "SELECT state, COUNT(*) AS n FROM instructions WHERE job_id = %s GROUP BY state"
        if self.store_url:
            import psycopg

            with psycopg.connect(self.store_url) as conn:
                return {s: int(n) for s, n in conn.execute(sql, (job,)).fetchall()}
        uri = f"file:{self.home / 'site.db'}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=5) as conn:
            rows = conn.execute(sql.replace("%s", "?"), (job,)).fetchall()
        return {s: int(n) for s, n in rows}

    def db_pid(self) -> int | None:
        """The PostgreSQL server's pid (its postmaster), if the store is PostgreSQL."""
        if self.cluster is None:
            return None
        return int((self.cluster.data / "postmaster.pid").read_text().split()[0])

    def rss(self) -> float:
        return sum(rss_mb(p.pid) for p in self.sites if p.poll() is None)

    def tail(self, name: str) -> str:
        path = self.work / name
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def site_log_problems(self) -> tuple[int, list[str]]:
        """Tracebacks in the site logs, and the commonest error lines (at most 5)."""
        tracebacks, errors = 0, Counter[str]()
        for k in range(len(self.sites)):
            lines = (self.work / f"site-{k}.log").read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if line.startswith("Traceback"):
                    tracebacks += 1
                    end = next(
                        (j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), i
                    )
                    errors[lines[end][:160]] += 1
                elif (" ERROR " in line or " WARNING " in line) and not (
                    i + 1 < len(lines) and lines[i + 1].startswith("Traceback")
                ):  # a traceback's own ERROR line is counted with the traceback
                    errors[line.split(" ", 3)[-1][:160]] += 1
        return tracebacks, [f"{n}x {e}" for e, n in errors.most_common(5)]

    def close(self) -> None:
        # the site first: agents that vanished under it would only add failures to its log
        _terminate([p for p in self.sites if p.poll() is None])
        if self.sim is not None and self.sim.poll() is None:
            _terminate([self.sim])
        if self.cluster is not None:
            self.cluster.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


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
    }
    assert fleet.sim is not None
    pids = [p.pid for p in fleet.sites]
    out["enrolled"] = fleet.wait_enrolled(60 + args.servers / 50)
    time.sleep(2 * HEARTBEAT_INTERVAL + 1)  # every agent past its first, spread heartbeat
    peak_rss = fleet.rss()

    fleet.sim_call("/_sim/window", "POST")  # 1. heartbeats only
    cpu = CpuWindow(pids, fleet.sim.pid, fleet.db_pid())
    time.sleep(args.duration)
    used = cpu.close()
    beats = fleet.sim_call("/_sim/stats")
    peak_rss = max(peak_rss, fleet.rss())
    out |= {
        "duration_s": args.duration,
        "heartbeat_cpu_pct": used["site_cpu_pct"],
        "heartbeat_db_cpu_pct": used["db_cpu_pct"],
        "heartbeats_due_per_s": args.servers / HEARTBEAT_INTERVAL,
        "heartbeats_per_s": beats["heartbeats_ok"] / beats["seconds"],
        "heartbeats_ok": beats["heartbeats_ok"],
        "heartbeats_failed": beats["heartbeats_failed"],
        "heartbeat_failures": beats["heartbeat_failures"],
        "heartbeat_p50_ms": beats["heartbeat_p50_ms"],
        "heartbeat_p99_ms": beats["heartbeat_p99_ms"],
        "heartbeat_max_ms": beats["heartbeat_max_ms"],
        "sim_cpu_pct": used["sim_cpu_pct"],
        "sim_loop_lag_p99_ms": beats["loop_lag_p99_ms"],
        "other_cpu_pct": used["other_cpu_pct"],
    }

    fleet.sim_call("/_sim/window", "POST")  # 2. one job to every server
    cpu = CpuWindow(pids, fleet.sim.pid, fleet.db_pid())
    started = time.monotonic()
    created = run_child(
        packdist_argv("--home", fleet.home, "distribute", "scale@1", "--all", "--json")
    )
    job = json.loads(created.stdout)["job"]
    first_installed = done_at = None
    counts: dict[str, int] = {}
    while time.monotonic() - started < args.job_timeout:
        counts = fleet.counts(job)
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
        "job_other_cpu_pct": used["other_cpu_pct"],
        "job_heartbeat_p99_ms": during["heartbeat_p99_ms"],
        "job_heartbeats_failed": during["heartbeats_failed"],
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

    out["site_rss_mb"] = max(peak_rss, fleet.rss())  # 4. memory, logs, the simulator's word
    out["site_tracebacks"], out["site_log_top"] = fleet.site_log_problems()
    out["sim_errors"] = fleet.sim_call("/_sim/stats")["errors"]
    warnings = []
    if out["enrolled"] < args.servers:
        warnings.append(f"only {out['enrolled']} of {args.servers} servers enrolled")
    for key in ("sim_cpu_pct", "job_sim_cpu_pct"):
        if out[key] > SIM_SATURATED:
            warnings.append(f"the simulator used {out[key]:.0f}% of a core ({key}): saturated")
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
    ("heartbeats failed", "heartbeats_failed", "{:,}"),
    ("job created (s)", "job_create_s", "{:.2f}"),
    ("first install (s)", "first_install_s", "{:.2f}"),
    ("job complete (s)", "job_complete_s", "{:.2f}"),
    ("instructions/s", "instructions_per_s", "{:,.1f}"),
    ("steady instructions/s (after the first)", "steady_instructions_per_s", "{:,.1f}"),
    ("site CPU during job (%)", "job_site_cpu_pct", "{:.1f}"),
    ("PostgreSQL CPU, heartbeats / job (%)", ("heartbeat_db_cpu_pct", "job_db_cpu_pct"), "{:.1f}"),
    ("heartbeat p99 during job (ms)", "job_heartbeat_p99_ms", "{:.1f}"),
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
