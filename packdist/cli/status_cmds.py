"""``packdist status``: the package x server matrix, and why a package is not installed."""

from __future__ import annotations

import time

import click

from packdist.cli.common import folded, home_option, json_option, print_json, resolve_home
from packdist.cli.job_view import _styled
from packdist.service.presence import site_presence
from packdist.site import views
from packdist.site.home import SiteHome


@click.command()
@home_option
@json_option
def status(as_json: bool) -> None:
    """The package x server matrix: what is installed where, and why not elsewhere."""
    store = SiteHome.open(resolve_home()).store()
    now = time.time()
    try:
        cells = store.status_cells()  # one read of the holdings and the newest instructions
        matrix = store.status_matrix(cells) if as_json else {}  # the JSON's "packages" only
        presence = site_presence(store, now)
        doc = views.status(store, now, read=cells, halted=not presence.running)
        children = views.child_sites(store, now) if as_json else []
    finally:
        store.close()
    servers = [s["name"] for s in doc["servers"]]
    packages = doc["packages"]
    if as_json:
        print_json(
            {
                "servers": servers,
                "packages": {p: matrix.get(p, {}) for p in packages},
                "cells": doc["matrix"],
                "server_details": doc["servers"],
                "child_sites": children,
                "site_server": presence.json(),
            }
        )
        return
    if presence.message is not None:
        click.echo(f"packdist: {presence.message}", err=True)
    if not packages or not servers:
        click.echo("nothing to show yet: " + ("no packages" if not packages else "no servers"))
        return
    from rich.console import Console  # here: ``status --json`` draws nothing
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, title="package x server", title_justify="left")
    table.add_column("package")
    for s in doc["servers"]:
        table.add_column(escape(s["name"] if s["online"] else f"{s['name']} (offline)"))
    attention = []
    for p in packages:
        row = doc["matrix"][p]
        table.add_row(escape(p), *[_styled(row[s]["word"]) for s in servers])
        for s in servers:
            c = row[s]
            troubled = c["word"] != "in progress" or c.get("last_error")
            if c["word"] not in ("installed", "-") and troubled and c["detail"]:
                attention.append((p, s, c))
    console = Console()
    console.print(folded(table))
    if attention:
        console.print()
        console.print("[bold]not installed, and why[/bold]")
        for p, s, c in attention:
            job = f" (job {c['job']})" if c.get("job") else ""
            console.print(
                f"  {escape(p)} on {escape(s)}: {_styled(c['word'])}{escape(job)}: "
                f"{escape(c['detail'])}"
            )
