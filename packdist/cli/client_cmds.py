"""``packdist client add|list|remove`` (in the site's home) and ``packdist fetch`` (any
machine, no home): clients, and what they install packages with."""

from __future__ import annotations

import time

import click
from rich.table import Table

from packdist.auth import hash_token, new_token
from packdist.cli.common import (
    ago,
    home_option,
    json_option,
    operator_name,
    print_json,
    print_table,
    resolve_home,
)
from packdist.cli.fetch_cmds import TOKEN_ENV
from packdist.core.names import check_server_name, parse_label
from packdist.service import Service
from packdist.site.home import SiteHome


@click.group()
@home_option
def client() -> None:
    """Register and manage clients: machines that fetch packages into a directory of
    their own ('packdist fetch'), from the nearest servers that hold them."""


@client.command("add")
@home_option
@click.argument("name")
@click.option(
    "--label",
    "label_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Location label, e.g. site=berlin (repeatable): servers with the client's label"
    " (key peers.location_label, default 'site') are its first sources.",
)
@json_option
def client_add(name: str, label_args: tuple[str, ...], as_json: bool) -> None:
    """Register a client and print its token (shown once)."""
    check_server_name(name)
    labels = dict(parse_label(x) for x in label_args)
    home = SiteHome.open(resolve_home())
    token = new_token(home.authority().fingerprint)  # the client verifies the site with it
    store = home.store()
    try:
        Service(store, operator_name()).add_client(name, hash_token(token), labels, time.time())
    finally:
        store.close()
    if as_json:
        print_json({"name": name, "token": token, "labels": labels})
        return
    click.echo(f"client {name} added. Its token (shown once):")
    click.echo(token)
    click.echo(
        f"run on {name}, with the token in {TOKEN_ENV} or a file only it reads (not in the"
        " process list): packdist fetch NAME@VERSION --into DIR --site SITE_URL"
        " [--token-file FILE]"
    )


@client.command("list")
@home_option
@json_option
def client_list(as_json: bool) -> None:
    """List clients (never their tokens)."""
    store = SiteHome.open(resolve_home()).store()
    try:
        clients = store.list_clients()
    finally:
        store.close()
    if as_json:
        print_json(
            {
                "clients": [
                    {
                        "name": c.name,
                        "labels": dict(c.labels),
                        "created_at": c.created_at,
                        "last_fetch": c.last_fetch,
                    }
                    for c in clients
                ]
            }
        )
        return
    table = Table("client", "labels", "last fetch")
    now = time.time()
    for c in clients:
        labels = ", ".join(f"{k}={v}" for k, v in c.labels)
        table.add_row(c.name, labels or "-", ago(c.last_fetch, now) if c.last_fetch else "never")
    print_table(table)


@client.command("remove")
@home_option
@click.argument("name")
def client_remove(name: str) -> None:
    """Remove a client: its token is refused from now on."""
    check_server_name(name)
    store = SiteHome.open(resolve_home()).store()
    try:
        Service(store, operator_name()).remove_client(name, time.time())
    finally:
        store.close()
    click.echo(f"client {name} removed: its token is refused from now on")
