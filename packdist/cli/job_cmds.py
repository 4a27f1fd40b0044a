"""``packdist distribute`` and ``packdist job …``."""

from __future__ import annotations

import sys
import time

import click

from packdist.cli.common import (
    folded,
    home_option,
    iso,
    json_option,
    operator_name,
    print_json,
    print_table,
    resolve_home,
    stderr_console,
)
from packdist.cli.durations import Duration
from packdist.cli.job_view import RateMeter, _job_table, _plain_line
from packdist.cli.site_words import SiteWatch, job_and_site, warn_if_no_site
from packdist.cli.targets import choose_targets, one_target_option, target_options
from packdist.core.names import check_package_name, parse_ref
from packdist.core.words import counted
from packdist.errors import NotFound, UserError
from packdist.service.jobs import JobUseCases, named
from packdist.service.presence import site_presence
from packdist.site.home import SiteHome
from packdist.site.job_docs import job_counts, job_json
from packdist.states import TERMINAL, InstructionState, JobState
from packdist.store.base import JobRecord, Store
from packdist.store.wakeup import SAFETY, StoreWatcher, watch

EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 75
LOOK_BACK = 10_000  # jobs read for a --state filter (their state comes of their counts)
HUMAN_PAGE = 50  # rows of ``job show`` (and ``job wait``) on a terminal unless told otherwise
PLAIN_ROWS = 20  # servers named one by one on the plain line of ``job wait``; more: counts


def _load(
    job_id: str, state: str | None = None, limit: int | None = None, offset: int = 0
) -> JobRecord:
    return job_and_site(job_id, state, limit, offset)[0]


def wait_for(job_id: str, timeout: float | None, quiet: bool = False, told: bool = False) -> int:
    """Wait until every instruction is terminal; returns the exit code of ``job wait``.
    With no site server running, says so first (unless ``told`` already); timed out, says
    that the job goes on."""
    store = SiteHome.open(resolve_home()).store()  # one store for every look (WAL: each
    watcher = watch(store)  # read sees the site's latest commits); watched before the first
    try:  # look, so a commit after it always wakes us
        store.get_job(job_id)  # an unknown job: NotFound before anything is said
        presence = site_presence(store, time.time())
        if not told:
            warn_if_no_site(presence)
        code = _wait(store, watcher, job_id, timeout, quiet, presence.message)
    finally:
        if watcher is not None:
            watcher.close()
        store.close()
    if code == EXIT_TIMEOUT:
        click.echo(
            f"packdist: timed out after {timeout:g}s; the job goes on:"
            f" `packdist job wait {job_id}` again",
            err=True,
        )
    return code


#: without a watcher of the store (PostgreSQL, or no inotify here), seconds between two
#: looks at a job by ``--wait`` without a terminal: small jobs end in a few tens of
#: milliseconds after they start (a one-file package on a near server), so the first looks
#: come soon; later ones every 0.1 s (each is one small read of the store)
FIRST_LOOKS = (0.01, 0.01, 0.02, 0.02, 0.03, 0.05)
LATER_LOOKS = 0.1
#: with a watcher, a look follows each commit of the site; after the first few (a small
#: job ends in about three), at most one per ``LATER_LOOKS``: a big job's many commits
#: are read together
QUICK_LOOKS = len(FIRST_LOOKS)
LIVE_REFRESH = 0.25  # seconds between two redraws of the live table (rates, ages)


def _between_looks(looks: int) -> float:
    return FIRST_LOOKS[looks - 1] if looks <= len(FIRST_LOOKS) else LATER_LOOKS


def _pause(watcher: StoreWatcher | None, most: float, gap: float, last_look: float) -> bool:
    """Wait before the next look, at most ``most`` seconds: until the store changes (then
    no sooner than ``gap`` after the last look), or all of it without a watcher. True if
    the store may have changed."""
    if watcher is None:
        time.sleep(most)
        return True
    if not watcher.wait(most):
        return False
    rest = gap - (time.monotonic() - last_look)
    if rest > 0:  # commits meanwhile are read by the same look
        time.sleep(rest)
        if watcher.changed():
            watcher.settle(most)  # not much past the timeout, whatever holds the lock
    return True


def _wait(
    store: Store,
    watcher: StoreWatcher | None,
    job_id: str,
    timeout: float | None,
    quiet: bool,
    halted: str | None = None,
) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    console = None if quiet else stderr_console()
    live = console is not None
    last_line = ""
    # what each look reads: the counts alone when quiet, a page of rows on a terminal,
    # every row for the plain line of a small job (a big one's line gives counts)
    page: int | None = 0 if quiet else HUMAN_PAGE if live else None
    job = store.get_job(job_id, limit=page)
    if page is None and job.total > PLAIN_ROWS:
        page = 0
    looked_at = time.monotonic()
    site = SiteWatch(store, halted, warn=not live)  # the live table shows it in its title

    def step() -> bool:
        nonlocal job, last_line, looked_at, halted
        job, looked_at = store.get_job(job_id, limit=page), time.monotonic()
        halted = site.look(looked_at)
        if not live and not quiet:
            line = _plain_line(job)
            if line != last_line:
                click.echo(line, err=True)
                last_line = line
        return job.state is not JobState.ACTIVE

    def pause(looks: int, most: float) -> bool:
        if deadline is not None:
            most = max(0.0, min(most, deadline - time.monotonic()))
        return _pause(watcher, most, LATER_LOOKS if looks > QUICK_LOOKS else 0.0, looked_at)

    looks = 0
    if console is not None:
        from rich.live import Live

        meter = RateMeter()
        meter.add(job, time.monotonic())
        with Live(
            _job_table(job, time.time(), meter, halted=halted),
            console=console,
            refresh_per_second=4,
        ) as view:
            done = step()
            while not done and (deadline is None or time.monotonic() < deadline):
                meter.add(job, time.monotonic())
                view.update(_job_table(job, time.time(), meter, halted=halted))
                looks += 1
                heard = pause(looks, LIVE_REFRESH)  # redrawn meanwhile: rates and ages move
                if heard or time.monotonic() - looked_at >= SAFETY:  # a look a second anyway
                    done = step()
            meter.add(job, time.monotonic())
            view.update(_job_table(job, time.time(), meter, halted=halted))
    else:
        while not step():
            if deadline is not None and time.monotonic() >= deadline:
                break
            looks += 1
            pause(looks, _between_looks(looks) if watcher is None else SAFETY)
    if job.state is JobState.ACTIVE:
        return EXIT_TIMEOUT
    return EXIT_OK if job.state is JobState.SUCCEEDED else EXIT_FAILED


@click.command()
@home_option
@click.argument("ref")
@target_options()
@click.option(
    "--max-attempts", type=click.IntRange(min=1), help="Give a target up after N attempts."
)
@click.option(
    "--deadline",
    type=Duration(minimum=1),
    help="Give targets up this long after the job was created (3600, 90m, 1h, 2d).",
)
@click.option(
    "--no-peers",
    is_flag=True,
    help="Servers fetch only from the site, not from peers that hold the package.",
)
@click.option("--wait", is_flag=True, help="Wait until the job is finished (exit as 'job wait').")
@click.option(
    "--timeout", type=Duration(), help="With --wait: how long to wait at most (30, 5m, 1h)."
)
@json_option
def distribute(
    ref: str,
    to: str | None,
    group: str | None,
    all_servers: bool,
    child: str | None,
    max_attempts: int | None,
    deadline: float | None,
    no_peers: bool,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Distribute NAME@VERSION to servers: one instruction per target."""
    if timeout is not None and not wait:
        raise UserError("--timeout needs --wait")
    one_target_option(to, group, all_servers, child)
    name, version = parse_ref(ref)
    store = SiteHome.open(resolve_home()).store()
    try:
        pkg = store.find_package(name, version)
        if pkg is None:
            raise NotFound(f"no package {name}@{version}")
        targets = choose_targets(store, to, group, all_servers, child)
        options = {"peers": False} if no_peers else {}
        job_id = JobUseCases(store, operator_name()).distribute(
            pkg.id, targets, time.time(), max_attempts, deadline, options
        )
        job = store.get_job(job_id)
        presence = site_presence(store, time.time())
    finally:
        store.close()
    code = EXIT_OK
    if not as_json:
        click.echo(f"job {job_id}: {pkg.ref} to {named([i.server for i in job.instructions])}")
    warn_if_no_site(presence)
    if wait:
        code = wait_for(job_id, timeout, quiet=as_json, told=presence.message is not None)
        job, presence, _ = job_and_site(job_id)
    if as_json:
        doc = {k: v for k, v in job_json(job).items() if k != "id"}
        print_json({"job": job_id, **doc, "site_server": presence.json()})
    elif wait:
        click.echo(f"job {job_id} {job.state.value}")
    if code:
        sys.exit(code)


@click.group()
@home_option
def job() -> None:
    """Show, wait for, list, cancel and retry jobs."""


STATE_WORDS = [s.value for s in InstructionState]


@job.command("show")
@home_option
@click.argument("job_id")
@click.option(
    "--state", type=click.Choice(STATE_WORDS), help="Only the instructions in this state."
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    help=f"At most N instructions (default: every one with --json, {HUMAN_PAGE} otherwise).",
)
@click.option(
    "--offset", type=click.IntRange(min=0), default=0, help="Skip the first N (by server name)."
)
@json_option
def job_show(job_id: str, state: str | None, limit: int | None, offset: int, as_json: bool) -> None:
    """The job, its counts per state and its instructions (in server order)."""
    if as_json:
        j, presence, _ = job_and_site(job_id, state, limit, offset)
        doc = job_json(j)
        if state is not None or limit is not None or offset:
            matching = doc["counts"][state] if state is not None else j.total
            doc["page"] = {"state": state, "offset": offset, "limit": limit, "matching": matching}
        doc["site_server"] = presence.json()
        print_json(doc)
        return
    page = HUMAN_PAGE if limit is None else limit
    j, presence, refused = job_and_site(job_id, state, page, offset, refusals=True)
    matching = job_counts(j)[state] if state is not None else j.total
    rest = matching - offset - len(j.instructions)
    more = f"… {rest:,} more; use --limit/--offset" if rest > 0 else ""
    halted = presence.message if j.state is JobState.ACTIVE else None
    from rich.console import Console

    console = Console()
    console.print(folded(_job_table(j, time.time(), more=more, halted=halted)))
    if j.state is JobState.ACTIVE:  # why a server may not answer: its agent is refused
        waiting = {i.server for i in j.instructions if i.state not in TERMINAL}
        for server, words in refused.items():
            if server in waiting:
                console.print(words, style="yellow", markup=False, highlight=False)


@job.command("wait")
@home_option
@click.argument("job_id")
@click.option("--timeout", type=Duration(), help="How long to wait at most (30, 5m, 1h).")
@json_option
def job_wait(job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait until every instruction is terminal (exit 0 done, 1 failed, 75 timeout).

    On a terminal: a live table (per server and total: progress, bytes, rate, last error);
    otherwise a plain line whenever something changes. --json: no progress, the job's
    document at the end."""
    code = wait_for(job_id, timeout, quiet=as_json)
    j, presence, _ = job_and_site(job_id)
    if as_json:
        print_json({**job_json(j), "site_server": presence.json()})
    else:
        click.echo(_plain_line(j))
    sys.exit(code)


@job.command("list")
@home_option
@click.option(
    "--state",
    "state",
    type=click.Choice([s.value for s in JobState]),
    help="Only the jobs in this state.",
)
@click.option("--package", "package", metavar="NAME[@VERSION]", help="Only this package's jobs.")
@click.option(
    "--limit", type=click.IntRange(min=1, max=10_000), default=100, show_default=True,
    help="The newest N jobs at most.",
)  # fmt: skip
@json_option
def job_list(state: str | None, package: str | None, limit: int, as_json: bool) -> None:
    """List recent jobs (each with its counts per state; ``job show`` lists instructions)."""
    name, version = (None, None)
    if package is not None:
        name, _, version = package.partition("@")
        check_package_name(name)
    store = SiteHome.open(resolve_home()).store()
    try:
        # a job's state comes of its counts: with --state, look further back, then keep N
        jobs = store.list_jobs(LOOK_BACK if state else limit, name, version or None)
    finally:
        store.close()
    if state is not None:
        jobs = [j for j in jobs if j.state.value == state][:limit]
    if as_json:
        print_json({"jobs": [job_json(j, instructions=False) for j in jobs]})
        return
    if not jobs:
        click.echo("no jobs yet" if state is None and package is None else "no such jobs")
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("job", "action", "package", "state", "servers", "created"):
        table.add_column(col)
    for j in jobs:
        done = sum(n for state, n in j.counts.items() if InstructionState(state) in TERMINAL)
        table.add_row(
            j.id,
            j.action,
            j.package_ref,
            j.state.value,
            f"{done:,}/{j.total:,} done",
            iso(j.created_at),
        )
    print_table(table)


@job.command("cancel")
@home_option
@click.argument("job_id")
@json_option
def job_cancel(job_id: str, as_json: bool) -> None:
    """Cancel every unfinished instruction of the job."""
    store = SiteHome.open(resolve_home()).store()
    try:
        n = JobUseCases(store, operator_name()).cancel_job(job_id, time.time())
    finally:
        store.close()
    if as_json:
        print_json({"job": job_id, "cancelled": n})
    else:
        click.echo(f"job {job_id}: {counted(n, 'instruction')} cancelled")


@job.command("retry")
@home_option
@click.argument("job_id")
@json_option
def job_retry(job_id: str, as_json: bool) -> None:
    """Retry failed and cancelled instructions now (and wake those waiting to retry)."""
    store = SiteHome.open(resolve_home()).store()
    try:
        n = JobUseCases(store, operator_name()).retry_job(job_id, time.time())
    finally:
        store.close()
    if as_json:
        print_json({"job": job_id, "queued": n})
    else:
        click.echo(f"job {job_id}: {counted(n, 'instruction')} queued again")
