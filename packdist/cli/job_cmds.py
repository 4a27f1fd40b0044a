"""``packdist distribute``, ``packdist job …`` and ``packdist status``."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from packdist.cli.common import ago, home_option, iso, json_option, print_json, resolve_home
from packdist.core.fsutil import human_bytes
from packdist.core.names import check_server_name, parse_ref
from packdist.errors import NoTargets, NotFound, UserError
from packdist.site.home import SiteHome
from packdist.states import TERMINAL, JobState
from packdist.store.base import JobRecord

EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 75


def job_json(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "package": job.package_ref,
        "package_id": job.package_id,
        "state": job.state.value,
        "created_at": iso(job.created_at),
        "max_attempts": job.max_attempts,
        "deadline": job.deadline,
        "instructions": [
            {
                "server": i.server,
                "state": i.state.value,
                "attempts": i.attempts,
                "last_error": i.last_error,
                "next_attempt_at": iso(i.next_attempt_at) if i.state.value == "retrying" else None,
                "bytes_sent": i.bytes_sent,
                "bytes_total": i.bytes_total,
                "updated_at": iso(i.updated_at),
                "finished_at": iso(i.finished_at),
            }
            for i in job.instructions
        ],
    }


def _job_table(job: JobRecord, now: float) -> Table:
    table = Table(
        box=None,
        title=escape(f"job {job.id}  {job.package_ref}  [{job.state.value}]"),
        title_justify="left",
    )
    for col in ("server", "state", "attempts", "progress", "bytes", "next attempt", "last error"):
        table.add_column(col)
    for i in job.instructions:
        total = max(i.bytes_total, 1)
        done = i.bytes_total if i.state.value == "installed" else min(i.bytes_sent, total)
        bar = Group(ProgressBar(total=total, completed=done, width=20))
        nxt = ""
        if i.state.value == "retrying":
            nxt = "due now" if i.next_attempt_at <= now else ago(i.next_attempt_at, now)
        size = f"{human_bytes(done)} / {human_bytes(i.bytes_total)}"
        table.add_row(
            i.server, i.state.value, str(i.attempts), bar, size, nxt, escape(i.last_error or "")
        )
    return table


def _load(job_id: str) -> JobRecord:
    store = SiteHome.open(resolve_home()).store()
    try:
        return store.get_job(job_id)
    finally:
        store.close()


def _plain_line(job: JobRecord) -> str:
    parts = []
    for i in job.instructions:
        extra = f" ({i.last_error})" if i.state.value == "retrying" and i.last_error else ""
        parts.append(f"{i.server}={i.state.value}{extra}")
    return f"job {job.id} {job.state.value}: " + ", ".join(parts)


def wait_for(job_id: str, timeout: float | None, quiet: bool = False) -> int:
    """Wait until every instruction is terminal; returns the exit code of ``job wait``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    console = Console(stderr=True)
    live = console.is_terminal and not quiet
    last_line = ""
    job = _load(job_id)

    def step() -> bool:
        nonlocal job, last_line
        job = _load(job_id)
        if not live and not quiet:
            line = _plain_line(job)
            if line != last_line:
                click.echo(line, err=True)
                last_line = line
        return job.state is not JobState.ACTIVE

    if live:
        with Live(_job_table(job, time.time()), console=console, refresh_per_second=4) as view:
            while not step():
                view.update(_job_table(job, time.time()))
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.25)
            view.update(_job_table(job, time.time()))
    else:
        while not step():
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.25)
    if job.state is JobState.ACTIVE:
        return EXIT_TIMEOUT
    return EXIT_OK if job.state is JobState.SUCCEEDED else EXIT_FAILED


@click.command()
@home_option
@click.argument("ref")
@click.option("--to", "to", help="Comma-separated server names.")
@click.option("--group", "group", help="Every server of this group.")
@click.option("--all", "all_servers", is_flag=True, help="Every server.")
@click.option(
    "--max-attempts", type=click.IntRange(min=1), help="Give a target up after N attempts."
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=1),
    help="Give targets up N seconds after the job was created.",
)
@click.option("--wait", is_flag=True, help="Wait until the job is finished (exit as 'job wait').")
@click.option(
    "--timeout", type=click.FloatRange(min=0), help="With --wait: seconds to wait at most."
)
@json_option
def distribute(
    ref: str,
    to: str | None,
    group: str | None,
    all_servers: bool,
    max_attempts: int | None,
    deadline: float | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Distribute NAME@VERSION to servers: one instruction per target."""
    if timeout is not None and not wait:
        raise UserError("--timeout needs --wait")
    chosen = [x for x in (to, group, all_servers or None) if x]
    if len(chosen) != 1:
        raise UserError("choose the targets with exactly one of --to, --group or --all")
    name, version = parse_ref(ref)
    store = SiteHome.open(resolve_home()).store()
    try:
        pkg = store.find_package(name, version)
        if pkg is None:
            raise NotFound(f"no package {name}@{version}")
        if to:
            targets = [check_server_name(s.strip()) for s in to.split(",") if s.strip()]
            if not targets:
                raise NoTargets("--to names no server")
        elif group:
            targets = store.servers_in_group(group)
            if not targets:
                raise NoTargets(f"group {group} has no servers")
        else:
            targets = [s.name for s in store.list_servers()]
            if not targets:
                raise NoTargets("there are no servers (add one with 'packdist server add')")
        job_id = store.add_job(pkg.id, targets, max_attempts, deadline, {}, time.time())
        job = store.get_job(job_id)
    finally:
        store.close()
    code = EXIT_OK
    if wait:
        code = wait_for(job_id, timeout, quiet=as_json)
        job = _load(job_id)
    if as_json:
        print_json({"job": job_id, **{k: v for k, v in job_json(job).items() if k != "id"}})
    else:
        click.echo(f"job {job_id}: {pkg.ref} to {', '.join(i.server for i in job.instructions)}")
        if wait:
            click.echo(f"job {job_id} {job.state.value}")
    if code:
        sys.exit(code)


@click.group()
@home_option
def job() -> None:
    """Show, wait for, list, cancel and retry jobs."""


@job.command("show")
@home_option
@click.argument("job_id")
@json_option
def job_show(job_id: str, as_json: bool) -> None:
    """The job and its instructions."""
    j = _load(job_id)
    if as_json:
        print_json(job_json(j))
    else:
        Console().print(_job_table(j, time.time()))


@job.command("wait")
@home_option
@click.argument("job_id")
@click.option("--timeout", type=click.FloatRange(min=0), help="Seconds to wait at most.")
def job_wait(job_id: str, timeout: float | None) -> None:
    """Wait until every instruction is terminal (exit 0 installed, 1 failed, 75 timeout)."""
    _load(job_id)
    code = wait_for(job_id, timeout)
    j = _load(job_id)
    click.echo(_plain_line(j))
    sys.exit(code)


@job.command("list")
@home_option
@json_option
def job_list(as_json: bool) -> None:
    """List recent jobs."""
    store = SiteHome.open(resolve_home()).store()
    try:
        jobs = store.list_jobs()
    finally:
        store.close()
    if as_json:
        print_json({"jobs": [job_json(j) for j in jobs]})
        return
    if not jobs:
        click.echo("no jobs yet")
        return
    table = Table(box=None)
    for col in ("job", "package", "state", "servers", "created"):
        table.add_column(col)
    for j in jobs:
        done = sum(1 for i in j.instructions if i.state in TERMINAL)
        table.add_row(
            j.id,
            j.package_ref,
            j.state.value,
            f"{done}/{len(j.instructions)} done",
            iso(j.created_at),
        )
    Console().print(table)


@job.command("cancel")
@home_option
@click.argument("job_id")
def job_cancel(job_id: str) -> None:
    """Cancel every unfinished instruction of the job."""
    store = SiteHome.open(resolve_home()).store()
    try:
        n = store.cancel_job(job_id, time.time())
    finally:
        store.close()
    click.echo(f"job {job_id}: {n} instruction(s) cancelled")


@job.command("retry")
@home_option
@click.argument("job_id")
def job_retry(job_id: str) -> None:
    """Retry failed and cancelled instructions now (and wake those waiting to retry)."""
    store = SiteHome.open(resolve_home()).store()
    try:
        n = store.retry_job(job_id, time.time())
    finally:
        store.close()
    click.echo(f"job {job_id}: {n} instruction(s) queued again")


@click.command()
@home_option
@json_option
def status(as_json: bool) -> None:
    """The package x server matrix: what is installed where."""
    store = SiteHome.open(resolve_home()).store()
    try:
        matrix = store.status_matrix()
        servers = [s.name for s in store.list_servers()]
        packages = [p.ref for p in store.list_packages()]
    finally:
        store.close()
    if as_json:
        print_json({"servers": servers, "packages": {p: matrix.get(p, {}) for p in packages}})
        return
    if not packages or not servers:
        click.echo("nothing to show yet: " + ("no packages" if not packages else "no servers"))
        return
    table = Table(box=None)
    table.add_column("package")
    for s in servers:
        table.add_column(s)
    styles = {"installed": "green", "failed": "red", "retrying": "yellow", "sending": "cyan"}
    for p in packages:
        row = matrix.get(p, {})
        cells = []
        for s in servers:
            word = row.get(s, "-")
            style = styles.get(word)
            cells.append(f"[{style}]{word}[/{style}]" if style else word)
        table.add_row(p, *cells)
    Console().print(table)
