"""``packdist activate REF`` and ``packdist rollback NAME``: which version of a package is
active on servers (``packages/NAME/current`` there). Both make install jobs with the
activate flag (service/activation.py): a version a server lacks is installed first, one it
holds crosses nothing."""

from __future__ import annotations

import sys
import time

import click

from packdist.cli.common import home_option, json_option, operator_name, print_json, resolve_home
from packdist.cli.durations import Duration
from packdist.cli.job_cmds import EXIT_OK, _load, wait_for
from packdist.cli.targets import choose_targets, one_target_option, target_options
from packdist.core.names import check_package_name, parse_ref
from packdist.errors import NotFound, UserError
from packdist.service import Service
from packdist.service.jobs import named
from packdist.site.home import SiteHome
from packdist.site.job_docs import job_json

WAIT = click.option("--wait", is_flag=True, help="Wait until it is done (exit as 'job wait').")
TIMEOUT = click.option(
    "--timeout", type=Duration(), help="With --wait: how long to wait at most (30, 5m, 1h)."
)


@click.command()
@home_option
@click.argument("ref")
@target_options(child_sites=False)
@WAIT
@TIMEOUT
@json_option
def activate(
    ref: str,
    to: str | None,
    group: str | None,
    all_servers: bool,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Make NAME@VERSION the active version on servers (installed first where missing)."""
    if timeout is not None and not wait:
        raise UserError("--timeout needs --wait")
    one_target_option(to, group, all_servers, child_sites=False)
    name, version = parse_ref(ref)
    store = SiteHome.open(resolve_home()).store()
    try:
        pkg = store.find_package(name, version)
        if pkg is None:
            raise NotFound(f"no package {name}@{version}")
        targets = choose_targets(store, to, group, all_servers, child_sites=False)
        job_id = Service(store, operator_name()).activate(pkg.id, targets, time.time())
    finally:
        store.close()
    codes = _finish([(job_id, pkg.ref, targets)], wait, timeout, as_json)
    if codes:
        sys.exit(codes)


@click.command()
@home_option
@click.argument("name")
@target_options(child_sites=False)
@WAIT
@TIMEOUT
@json_option
def rollback(
    name: str,
    to: str | None,
    group: str | None,
    all_servers: bool,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Make the version of NAME active before the current one active again on servers."""
    if timeout is not None and not wait:
        raise UserError("--timeout needs --wait")
    one_target_option(to, group, all_servers, child_sites=False)
    check_package_name(name)
    store = SiteHome.open(resolve_home()).store()
    try:
        targets = choose_targets(store, to, group, all_servers, child_sites=False)
        done = Service(store, operator_name()).rollback(name, targets, time.time())
    finally:
        store.close()
    codes = _finish(done.jobs, wait, timeout, as_json, done.skipped)
    if codes:
        sys.exit(codes)


def _finish(
    jobs: list[tuple[str, str, list[str]]],
    wait: bool,
    timeout: float | None,
    as_json: bool,
    rollback: dict[str, str] | None = None,
) -> int:
    """Print the jobs (and wait for each with ``--wait``); the exit code, as ``job wait``.
    ``rollback``: the servers a rollback left alone, and why (its JSON lists every job)."""
    code = EXIT_OK
    if wait:
        deadline = None if timeout is None else time.monotonic() + timeout
        for job_id, _, _ in jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            code = max(code, wait_for(job_id, left, quiet=as_json))
    if as_json:
        docs = [
            {"job": job_id, **{k: v for k, v in job_json(_load(job_id)).items() if k != "id"}}
            for job_id, _, _ in jobs
        ]
        print_json(docs[0] if rollback is None else {"jobs": docs, "skipped": rollback})
        return code
    for job_id, ref, targets in jobs:
        click.echo(f"job {job_id}: {ref} active on {named(targets)}")
        if wait:
            click.echo(f"job {job_id} {_load(job_id).state.value}")
    for server, why in (rollback or {}).items():
        click.echo(f"{server}: left alone, {why}")
    return code
