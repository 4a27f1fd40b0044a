"""``packdist validate``: have agents re-hash their installed trees; queue repairs."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from packdist.cli.common import home_option, json_option, print_json, resolve_home
from packdist.core.names import check_server_name, parse_ref
from packdist.errors import NotFound, UserError
from packdist.site.home import SiteHome
from packdist.store.base import Store

EXIT_OK, EXIT_PROBLEMS = 0, 1


@click.command()
@home_option
@click.option(
    "--server",
    "servers",
    multiple=True,
    metavar="NAME",
    help="Validate this server only (repeatable; default: every server).",
)
@click.option(
    "--package", "packages", multiple=True, metavar="NAME@VERSION", help="Only this package."
)
@json_option
def validate(servers: tuple[str, ...], packages: tuple[str, ...], as_json: bool) -> None:
    """Make agents re-hash their installed trees against the manifests.

    A missing or altered file marks that package on that server corrupt in the status matrix
    (paths named) and queues a repair job that fetches only the damaged chunks. Runs against
    the site's home, whether or not 'site serve' runs (the agents must be reachable).

    Exit 0: everything verified; 1: something is corrupt, or a server could not be asked.
    """
    home = SiteHome.open(resolve_home())
    key = home.signing_key()
    store = home.store()
    try:
        known = {s.name: s for s in store.list_servers()}
        if servers:
            names = [check_server_name(n.strip()) for s in servers for n in s.split(",") if n]
            unknown = [n for n in names if n not in known]
            if unknown:
                raise NotFound(f"unknown server(s): {', '.join(unknown)}")
            targets = [known[n] for n in dict.fromkeys(names)]
        else:
            targets = list(known.values())
            if not targets:
                raise UserError("there are no servers (add one with 'packdist server add')")
        package_ids = None
        if packages:
            package_ids = []
            for ref in packages:
                pkg = store.find_package(*parse_ref(ref))
                if pkg is None:
                    raise NotFound(f"no package {ref}")
                package_ids.append(pkg.id)
        report = asyncio.run(_run(store, key, targets, package_ids, home))
    finally:
        store.close()
    bad = _corrupt(report)
    failed = [s for s in report if s["error"]]
    if as_json:
        print_json({"servers": report, "corrupt": bad, "not_validated": len(failed)})
    else:
        _print(report)
    if bad or failed:
        sys.exit(EXIT_PROBLEMS)


def _corrupt(report: list[dict[str, Any]]) -> int:
    from packdist.site.validation import corrupt_count

    return corrupt_count(report)


async def _run(
    store: Store, key: Any, targets: list[Any], package_ids: list[str] | None, home: SiteHome
) -> Any:
    # aiohttp is imported here, not with the module: every other command starts faster
    from packdist.http import new_session
    from packdist.site.serving_tls import dialing_context
    from packdist.site.validation import validate_servers

    async def db(fn: Any) -> Any:
        return fn(store)

    home.authority()  # a home older than its authority gets one (as 'site serve' does)
    session = new_session(tls=dialing_context(home.root))
    try:
        return await validate_servers(db, key, session, targets, package_ids)
    finally:
        await session.close()


def _print(report: list[dict[str, Any]]) -> None:
    console = Console(highlight=False)
    for s in report:
        name = escape(s["server"])
        if s["error"]:
            console.print(f"{name}: [red]not validated[/red]: {escape(s['error'])}")
            continue
        if not s["results"]:
            console.print(f"{name}: nothing installed")
        for r in s["results"]:
            pkg = escape(str(r["package"]))
            if r["ok"]:
                console.print(f"{name} {pkg}: [green]ok[/green]")
                continue
            repair = f" (repair job {r['repair_job']})" if r["repair_job"] else ""
            console.print(f"{name} {pkg}: [red]corrupt[/red]{escape(repair)}")
            for p in r["problems"]:
                console.print(f"    {escape(p['path'])}: {escape(p['problem'])}")
