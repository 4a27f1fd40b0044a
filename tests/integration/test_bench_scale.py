"""``python -m bench scale`` at a small size: a real site, simulated agents, every figure the
issue asks for, and nothing left behind (no process, no folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import pgcluster

REPO = Path(__file__).resolve().parents[2]
FIELDS = (
    "servers",
    "heartbeat_cpu_pct",
    "heartbeat_p99_ms",
    "job_create_s",
    "job_complete_s",
    "instructions_per_s",
    "job_show_s",
    "status_s",
    "overview_s",
    "site_rss_mb",
    "heartbeats_ok",
    "heartbeats_failed",
    "site_tracebacks",
    "sim_cpu_pct",
    "trustworthy",
    "warnings",
)


def run_bench(work: Path, *args: str, timeout: float = 55) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PACKDIST_BENCH_DIR": str(work)}
    return subprocess.run(
        [sys.executable, "-m", "bench", "scale", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def assert_complete_report(doc: dict[str, Any], servers: int) -> None:
    missing = [f for f in FIELDS if f not in doc]
    assert not missing, f"missing from the report: {missing}"
    assert doc["servers"] == servers
    assert doc["enrolled"] == servers
    assert doc["heartbeats_ok"] > 0
    assert doc["instructions_by_state"] == {"installed": servers}, doc["instructions_by_state"]
    assert doc["job_complete_s"] is not None and doc["job_complete_s"] > 0
    assert doc["instructions_per_s"] > 0
    assert doc["site_rss_mb"] > 0
    assert doc["site_tracebacks"] == 0, doc["site_log_top"]
    assert doc["sim_errors"] == {}, doc["sim_errors"]  # every site credential verified
    assert doc["back_to_normal_s"] is not None  # every agent heartbeating normally after


def test_bench_scale_reports_every_figure_for_twenty_servers_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    # the agents in two simulator processes: the report is still one, of all twenty
    args = ("--servers", "20", "--duration", "3", "--fail-pct", "10", "--sim-procs", "2")
    res = run_bench(tmp_path, *args, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert_complete_report(doc, 20)
    assert doc["sim_procs"] == 2
    assert doc["install_calls"] >= 20
    assert list(tmp_path.iterdir()) == [], "the work folder was not removed"
    assert processes_mentioning(str(tmp_path)) == []


def test_bench_scale_drives_two_site_workers_on_postgresql(tmp_path: Path) -> None:
    why = pgcluster.missing_reason()
    if why:
        pytest.skip(f"PostgreSQL tier skipped: {why}")
    res = run_bench(
        tmp_path,
        "--servers",
        "20",
        "--store",
        "postgresql",
        "--workers",
        "2",
        "--duration",
        "3",
        "--install-delay",
        "0.5",
        "--json",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert_complete_report(doc, 20)
    assert doc["workers"] == 2
    assert doc["status_calls"] > 0  # installs that take time are followed by long polls
    assert processes_mentioning(str(tmp_path)) == []


def test_bench_scale_refuses_two_workers_on_sqlite_in_one_line(tmp_path: Path) -> None:
    res = run_bench(tmp_path, "--servers", "5", "--workers", "2", timeout=30)
    assert res.returncode == 2
    assert "--workers above 1 needs --store postgresql" in res.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []
