"""``packdist package remove``: removal jobs, carried out like installs (same despooler,
leases, retries and views)."""

from __future__ import annotations

import sys
import time

import click

from packdist.cli.common import home_option, json_option, operator_name, print_json, resolve_home
from packdist.cli.durations import Duration
from packdist.cli.job_cmds import EXIT_OK, _load, wait_for
from packdist.core.names import (
    check_reported_name,  # CHILD/SERVER too
    parse_ref,
)
from packdist.errors import NoTargets, NotFound, UserError
from packdist.service import Service
from packdist.service.jobs import named
from packdist.site.home import SiteHome
from packdist.site.job_docs import job_json


@click.command("remove")
@home_option
@click.argument("ref")
@click.option("--from", "from_", help="Comma-separated server names.")
@click.option("--group", "group", help="Every server of this group.")
@click.option(
    "--everywhere",
    is_flag=True,
    help="Every server that holds the version or has an unfinished install of it.",
)
@click.option(
    "--max-attempts", type=click.IntRange(min=1), help="Give a target up after N attempts."
)
@click.option(
    "--deadline",
    type=Duration(minimum=1),
    help="Give targets up N seconds after the job was created.",
)
@click.option("--wait", is_flag=True, help="Wait until the job is finished (exit as 'job wait').")
@click.option(
    "--timeout", type=Duration(), help="With --wait: how long to wait at most (30, 5m, 1h)."
)
@json_option
def package_remove(
    ref: str,
    from_: str | None,
    group: str | None,
    everywhere: bool,
    max_attempts: int | None,
    deadline: float | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Remove NAME@VERSION from servers: a job with one removal instruction per target.

    Unfinished installs of the version on those servers are cancelled (superseded); a later
    'distribute' of it cancels unfinished removals likewise."""
    if timeout is not None and not wait:
        raise UserError("--timeout needs --wait")
    chosen = [x for x in (from_, group, everywhere or None) if x]
    if len(chosen) != 1:
        raise UserError("choose the targets with exactly one of --from, --group or --everywhere")
    name, version = parse_ref(ref)
    store = SiteHome.open(resolve_home()).store()
    try:
        pkg = store.find_package(name, version)
        if pkg is None:
            raise NotFound(f"no package {name}@{version}")
        if from_:
            targets = [check_reported_name(s.strip()) for s in from_.split(",") if s.strip()]
            if not targets:
                raise NoTargets("--from names no server")
        elif group:
            targets = store.servers_in_group(group)
            if not targets:
                raise NoTargets(f"group {group} has no servers")
        else:
            targets = Service(store).package_holders(pkg.id)
            if not targets:
                raise NoTargets(
                    f"{pkg.ref} is on no server and being installed on none: nothing to remove"
                )
        job_id = Service(store, operator_name()).remove(
            pkg.id, targets, time.time(), max_attempts, deadline
        )
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
        servers = named([i.server for i in job.instructions])
        click.echo(f"job {job_id}: remove {pkg.ref} from {servers}")
        if wait:
            click.echo(f"job {job_id} {job.state.value}")
    if code:
        sys.exit(code)
