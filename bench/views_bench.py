"""``python -m bench views``: what the operators' views cost with a big fleet and one job to
all of it, without a running site or agents.

A site home is seeded directly (N servers registered in one transaction, as ``bench scale``
does, one job to every server), then the job is moved along as a despooler would: most
instructions installed, some retrying, some failed, some under way, the rest pending. Then:

* ``job show JOB --json``, ``status --json``, ``job list --json``, ``server list --json``:
  wall time of the real CLI (Python start-up included, about 0.3 s) and bytes printed;
* the overview (``GET /api/overview``: the view, its HTML and the JSON, as the dashboard
  builds them) and ``/metrics``, timed in this process, and their bytes.

``--json`` prints one object with those figures. To compare with an older commit, export
it (``git archive OLD packdist bench | tar -x -C DIR``), copy this file into ``DIR/bench``
and run ``PYTHONPATH=DIR python -m bench views`` from ``DIR`` (the CLI children run from
the folder of the ``bench`` package they were started from).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, packdist_argv, run_child, run_quiet, scratch

DESCRIPTION = "job show, status, overview and metrics with N servers and one job to all"


def _seed(home: Path, servers: int, history: int = 0) -> str:
    """A site with ``servers`` servers and one job to all of them, moved along; its id.
    ``history``: as many older versions, each sent to every server (``history`` x
    ``servers`` more instructions, left pending: the history the pages must not read)."""
    from packdist.auth import hash_token
    from packdist.errors import ErrorKind
    from packdist.service import Service
    from packdist.site.home import SiteHome

    tree = home.parent / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "app").write_bytes(b"#!/bin/sh\necho app\n" * 100)
    run_quiet(
        packdist_argv("--home", home, "package", "create", tree, "--name", "app", "--version", "1")
    )
    store = SiteHome.open(home).store()
    now = time.time()
    try:
        service = Service(store)
        names = [f"sim{i:05d}" for i in range(servers)]
        with store.transaction():
            for name in names:
                url = f"http://127.0.0.1:9/s/{name}"
                service.add_server(name, url, hash_token(f"token-{name}"), [], {}, now)
        pkg = store.find_package("app", "1")
        assert pkg is not None
        job_id = service.distribute(pkg.id, names, now)
        with store.transaction():  # 70% installed, 8% retrying, 2% failed, 5% sending
            claims = service.claim_ready("bench", 3600, int(servers * 0.85), now)
            for n, c in enumerate(claims):
                share = n % 85
                if share < 70:
                    service.mark_installed(c.instruction_id, c.lease, now)
                elif share < 78:
                    service.schedule_retry(
                        c.instruction_id, c.lease, "connect timeout", now + 600, now
                    )
                elif share < 80:
                    service.mark_failed(c.instruction_id, c.lease, "disk full", now, ErrorKind.DISK)
        for n in range(history):
            old = tree.parent / f"old-{n}"
            (old / "bin").mkdir(parents=True)
            (old / "bin" / "old").write_bytes(f"old {n}\n".encode() * 100)
            run_quiet(
                packdist_argv(
                    "--home", home, "package", "create", old, "--name", f"old{n}", "--version", "1"
                )
            )
            found = store.find_package(f"old{n}", "1")
            assert found is not None
            service.distribute(found.id, names, now - 3600 * (n + 1))
    finally:
        store.close()
    return job_id


def _cli(home: Path, *args: str) -> tuple[float, int]:
    """Best wall time of three runs of ``packdist ARGS``, and the bytes it printed."""
    best, size = float("inf"), 0
    for _ in range(3):
        run = run_child(packdist_argv("--home", home, *args), cwd=REPO)
        best, size = min(best, run.seconds), len(run.stdout.encode())
    return best, size


def _best(fn: Any) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _fleet_pages(store: Any, job_id: str) -> dict[str, float]:
    """The fleet's pages as the dashboard builds them (view, HTML, JSON), in process."""
    from packdist.site import pages, views
    from packdist.site.package_pages import package_content, package_doc
    from packdist.site.server_list import Filters, servers_content, servers_doc
    from packdist.site.server_pages import server_content, server_doc

    def job_page() -> None:
        now = time.time()
        doc = views.job_page(store, job_id, now)
        json.dumps({**doc, "html": pages.job_content(doc, now)})

    def package_page(word: str | None) -> None:
        now = time.time()
        doc = package_doc(store, "app@1", now, word, 0)
        json.dumps({**doc, "html": package_content(doc)})

    def server_page() -> None:
        now = time.time()
        doc = server_doc(store, "sim00075", now)  # retrying: a page with a cause
        json.dumps({**doc, "html": server_content(doc, now)})

    def server_list(state: str | None) -> None:
        now = time.time()
        f = Filters(state=state)
        doc = servers_doc(store, f, "site", now)
        json.dumps({**doc, "html": servers_content(doc, f, now)})

    return {
        "server_list_page_s": _best(lambda: server_list(None)),
        "server_list_offline_s": _best(lambda: server_list("offline")),
        "job_page_s": _best(job_page),
        "package_page_s": _best(lambda: package_page(None)),
        "package_retrying_s": _best(lambda: package_page("retrying")),
        "server_page_s": _best(server_page),
        "search_s": _best(lambda: store.search("sim0007")),
    }


def _in_process(home: Path, job_id: str) -> dict[str, float]:
    from packdist.site import metrics, pages, views
    from packdist.site.home import SiteHome

    store = SiteHome.open(home).store()
    out: dict[str, float] = {}
    try:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            now = time.time()
            doc = views.overview(store, now)
            doc["html"] = pages.overview_content(doc, now)
            body = json.dumps(doc).encode()
            best = min(best, time.perf_counter() - t0)
        out["overview_s"], out["overview_bytes"] = best, len(body)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            text = metrics.render(
                store.metrics_totals(metrics.TRANSFER_BOUNDS), store.list_servers(), time.time()
            )
            best = min(best, time.perf_counter() - t0)
        out["metrics_s"], out["metrics_bytes"] = best, len(text.encode())
        out.update(_fleet_pages(store, job_id))
    finally:
        store.close()
    return out


def measure(servers: int, history: int = 0) -> dict[str, Any]:
    work = scratch(prefix="views-")
    home = work / "site"
    try:
        run_quiet(packdist_argv("--home", home, "site", "init", "--name", "bench"))
        t0 = time.perf_counter()
        job = _seed(home, servers, history)
        out: dict[str, Any] = {
            "servers": servers,
            "instructions": servers * (1 + history),
            "seed_s": time.perf_counter() - t0,
        }
        for key, args in (
            ("job_show", ("job", "show", job, "--json")),
            ("job_show_human", ("job", "show", job)),
            ("status", ("status", "--json")),
            ("job_list", ("job", "list", "--json")),
            ("server_list", ("server", "list", "--json")),
        ):
            out[f"{key}_s"], out[f"{key}_bytes"] = _cli(home, *args)
        out["python_startup_s"] = _cli(home, "--help")[0]
        out.update(_in_process(home, job))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


ROWS = (
    ("job show --json (s)", "job_show_s"),
    ("job show, human (s)", "job_show_human_s"),
    ("status --json (s)", "status_s"),
    ("job list --json (s)", "job_list_s"),
    ("server list --json (s)", "server_list_s"),
    ("python start-up (s)", "python_startup_s"),
    ("overview, in process (s)", "overview_s"),
    ("metrics, in process (s)", "metrics_s"),
    ("servers page, in process (s)", "server_list_page_s"),
    ("servers page, the offline ones (s)", "server_list_offline_s"),
    ("job page with its causes, in process (s)", "job_page_s"),
    ("package page, in process (s)", "package_page_s"),
    ("package page, the retrying servers (s)", "package_retrying_s"),
    ("server page, in process (s)", "server_page_s"),
    ("search, in process (s)", "search_s"),
)
SIZES = (
    ("job show --json", "job_show_bytes"),
    ("status --json", "status_bytes"),
    ("overview", "overview_bytes"),
    ("metrics", "metrics_bytes"),
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench views", description=DESCRIPTION)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument(
        "--history", type=int, default=9, help="older versions sent to every server (default 9)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.pop("PACKDIST_HOME", None)
    out = measure(args.servers, args.history)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"{out['servers']:,} servers, one job to all, {out['instructions']:,} instructions"
        f" (seeded in {out['seed_s']:.1f}s)"
    )
    for label, key in ROWS:
        print(f"  {label:<42} {out[key]:8.3f}")
    for label, key in SIZES:
        print(f"  {label + ' (KiB)':<42} {out[key] / 1024:8.0f}")
    return 0
