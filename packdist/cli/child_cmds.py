"""``packdist site add-child`` and ``packdist site children``: child sites, at the parent."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from packdist.auth import hash_token, new_token
from packdist.cli.common import (
    ago,
    home_option,
    iso,
    json_option,
    operator_name,
    print_json,
    resolve_home,
)
from packdist.cli.server_cmds import check_url
from packdist.core.names import check_server_name
from packdist.service import Service
from packdist.site.home import SiteHome


@click.command("add-child")
@home_option
@click.argument("name")
@click.option("--url", required=True, help="Where this site reaches the child's 'site serve'.")
@json_option
def site_add_child(name: str, url: str, as_json: bool) -> None:
    """Register a child site and print its token (shown once).

    The child is an ordinary site ('site init' in its own home) that joins with
    'site serve --parent THIS_SITE_URL --token TOKEN'; its servers are enrolled there and
    named CHILD/SERVER here."""
    check_server_name(name)
    url = check_url(url, "child site URL")
    home = SiteHome.open(resolve_home())
    token = new_token(home.authority().fingerprint)  # the child verifies this site with it
    store = home.store()
    try:
        Service(store, operator_name()).add_child(name, url, hash_token(token), time.time())
    finally:
        store.close()
    if as_json:
        print_json({"name": name, "url": url, "token": token})
        return
    click.echo(f"child site {name} added. Its token (shown once):")
    click.echo(token)
    click.echo(
        f"run at {name}: packdist site serve --listen HOST:PORT --parent THIS_SITE_URL"
        " --token TOKEN (or the token in PACKDIST_PARENT_TOKEN)"
    )


@click.command("children")
@home_option
@json_option
def site_children(as_json: bool) -> None:
    """List the child sites, their state and their servers."""
    store = SiteHome.open(resolve_home()).store()
    now = time.time()
    try:
        if as_json:
            print_json({"children": child_sites_json(store, now)})
            return
        children = Service(store).child_sites(now)
    finally:
        store.close()
    if not children:
        click.echo("no child sites yet (add one with 'packdist site add-child NAME --url URL')")
        return
    table = Table(box=None)
    for col in ("child site", "url", "state", "last report", "servers online"):
        table.add_column(col)
    for c in children:
        up = sum(1 for s in c.servers if s.online)
        table.add_row(
            escape(c.name if c.site_name in (None, c.name) else f"{c.name} ({c.site_name})"),
            escape(c.url),
            c.state,
            ago(c.last_seen, now),
            f"{up} of {len(c.servers)}",
        )
    Console().print(table)


def child_sites_json(store: Any, now: float) -> list[dict[str, Any]]:
    """The child sites and their servers as ``status --json`` shows them."""
    children = Service(store).child_sites(now)
    refs = store.package_refs() if children else {}
    docs = [c.to_json(refs) for c in children]
    for doc in docs:
        doc["last_seen"] = iso(doc["last_seen"])
        doc["created_at"] = iso(doc["created_at"])
        for s in doc["servers"]:
            s["last_seen"] = iso(s["last_seen"])
    return docs
