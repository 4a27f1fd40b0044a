"""The fleet of ``bench scale``: a site home with N servers registered, its workers, the
simulated agents (:mod:`bench.simagents`), and the readings of ``/proc`` that say what each
of them costs."""

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
    free_port,
    packdist_argv,
    run_quiet,
    scratch,
    wait_healthy,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


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

    def __init__(self, sites: list[int], sims: list[int], db: int | None) -> None:
        self.sites, self.sims, self.db = sites, sims, db
        self.started = time.monotonic()
        self.site0 = sum(cpu_seconds(p) for p in sites)
        self.sim0 = [cpu_seconds(p) for p in sims]
        self.db0 = tree_cpu_seconds(db) if db else 0.0
        self.me0 = _own_cpu()
        self.all0 = machine_busy_seconds()

    def close(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-9)
        site = sum(cpu_seconds(p) for p in self.sites) - self.site0
        sims = [cpu_seconds(p) - c0 for p, c0 in zip(self.sims, self.sim0, strict=True)]
        sim = sum(sims)
        db = tree_cpu_seconds(self.db) - self.db0 if self.db else 0.0
        me = _own_cpu() - self.me0  # with the CLI commands it ran
        other = machine_busy_seconds() - self.all0 - site - sim - db - me
        return {
            "site_cpu_pct": 100 * site / wall,
            "sim_cpu_pct": 100 * sim / wall,
            "sim_busiest_cpu_pct": 100 * max(sims) / wall,  # one process: one core at most
            "db_cpu_pct": 100 * db / wall,
            "other_cpu_pct": max(0.0, 100 * other / wall),
        }


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report of several simulators: numbers added up, except latencies, lags and the
    window's length, which take the highest; dicts of counts merged the same way."""
    out: dict[str, Any] = {}
    for report in reports:
        for key, value in report.items():
            if isinstance(value, dict):
                merged = out.setdefault(key, {})
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
            elif isinstance(value, int | float) and not isinstance(value, bool):
                worst = key.endswith(("_ms", "_s")) or key == "seconds"
                out[key] = max(out.get(key, value), value) if worst else out.get(key, 0) + value
            else:
                out.setdefault(key, value)
    return out


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
        self.sims: list[subprocess.Popen[bytes]] = []
        self.sim_urls: list[str] = []  # one simulator process per slice of the agents
        self.password = ""

    def setup(self) -> None:
        if self.args.store == "postgresql":
            sys.path.insert(0, str(REPO))
            from tests import pgcluster

            why = pgcluster.missing_reason()
            if why:
                raise SystemExit(f"bench scale: --store postgresql: {why}")
            # fsync on, as in production: commits cost what they cost there
            settings = {}
            if os.environ.get("PACKDIST_BENCH_PG_STATEMENTS"):  # where the database's time goes
                settings = {"shared_preload_libraries": "pg_stat_statements"}
            self.cluster = pgcluster.Cluster(durable=True, settings=settings)
            self.cluster.start()
            self.store_url = self.cluster.new_database()
            if settings:
                self._db_execute("CREATE EXTENSION pg_stat_statements")
        init = ["--home", str(self.home), "site", "init", "--name", "scale", "--json"]
        if self.store_url:
            init += ["--store", self.store_url]
        self.password = json.loads(run_quiet(packdist_argv(*init)))["operator_password"]
        ports = [free_port() for _ in range(self.args.sim_procs)]
        self.sim_urls = [f"http://127.0.0.1:{port}" for port in ports]
        agents = self._register(self.args.servers)
        source = self.work / "src"
        (source / "bin").mkdir(parents=True)
        (source / "bin" / "tool").write_bytes(b"#!/bin/sh\necho scale\n" * 200)
        (source / "README").write_bytes(os.urandom(20_000))
        create = ["package", "create", str(source), "--name", "scale", "--version", "1"]
        run_quiet(packdist_argv("--home", self.home, *create))
        for k in range(self.args.workers):
            self.site_urls.append(self._start_site(k))
        for j, port in enumerate(ports):  # agent i lives in simulator i mod P
            config = self.work / f"sim-{j}.json"  # holds the tokens: the owner's alone
            config.touch(mode=0o600)
            config.write_text(
                json.dumps(
                    {
                        "port": port,
                        "sites": self.site_urls,
                        "agents": agents[j :: len(ports)],
                        "install_delay": self.args.install_delay,
                        "fail_pct": self.args.fail_pct,
                        "keepalive": self.args.keepalive,
                        "seed": j + 1,
                        "max_seconds": self.args.duration + self.args.job_timeout + 600,
                    }
                )
            )
            with open(self.work / f"sim-{j}.log", "ab") as out:
                self.sims.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.simagents", str(config)],
                        stdout=out,
                        stderr=out,
                        cwd=REPO,
                    )
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
                for i, (name, token) in enumerate(agents):
                    url = f"{self.sim_urls[i % len(self.sim_urls)]}/s/{name}"
                    service.add_server(name, url, hash_token(token), [], {}, now)
        finally:
            store.close()
        return agents

    def _start_site(self, k: int) -> str:
        url = f"http://127.0.0.1:{free_port()}"
        log = self.work / f"site-{k}.log"
        argv = packdist_argv(
            "--home", self.home, "site", "serve", "--listen", url[7:], "--plain-http"
        )  # simulated agents speak plain HTTP
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out)
        self.sites.append(proc)
        wait_healthy(url, proc, log)
        return url

    def sim_call(self, path: str, method: str = "GET") -> dict[str, Any]:
        """The simulators' answers, as one: counts added up, latencies and lags the worst
        of them (a p99 of the whole is at most the highest p99 of its parts)."""
        return merge_reports([self._sim_call(url, path, method) for url in self.sim_urls])

    @staticmethod
    def _sim_call(url: str, path: str, method: str) -> dict[str, Any]:
        req = urllib.request.Request(f"{url}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc

    def wait_enrolled(self, limit: float) -> int:
        deadline = time.monotonic() + limit
        enrolled = 0
        while time.monotonic() < deadline:
            for j, sim in enumerate(self.sims):
                if sim.poll() is not None:
                    raise ChildFailed(f"simulator {j} exited: {self.tail(f'sim-{j}.log')}")
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

    def _db_execute(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        assert self.store_url is not None
        with psycopg.connect(self.store_url, autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def statement_report(self) -> str:
        """The statements that took the database's time (with PACKDIST_BENCH_PG_STATEMENTS)."""
        rows = self._db_execute(
            "SELECT round(total_exec_time::numeric, 0), calls,"
            " round((total_exec_time / calls)::numeric, 3), left(regexp_replace(query,"
            " '\\s+', ' ', 'g'), 110) FROM pg_stat_statements ORDER BY 1 DESC LIMIT 20"
        )
        lines = ["total ms | calls | ms each | statement"]
        lines += [" | ".join(str(x) for x in row) for row in rows]
        return "\n".join(lines)

    def close(self) -> None:
        # the site first: agents that vanished under it would only add failures to its log
        _terminate([p for p in self.sites if p.poll() is None])
        _terminate([p for p in self.sims if p.poll() is None])
        if self.cluster is not None and os.environ.get("PACKDIST_BENCH_PG_STATEMENTS"):
            print(self.statement_report(), file=sys.stderr)
        if self.cluster is not None:
            self.cluster.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
