"""``packdist client add|list|remove`` (in the site's home) and ``packdist fetch`` (any
machine, no home): clients, and what they install packages with."""

from __future__ import annotations

import sys
import time
from pathlib import Path

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
from packdist.core.fsutil import human_bytes
from packdist.core.names import check_server_name, parse_label
from packdist.service import Service
from packdist.site.home import SiteHome

TOKEN_ENV = "PACKDIST_CLIENT_TOKEN"


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
        f"run on {name}: packdist fetch NAME@VERSION --into DIR --site SITE_URL --token TOKEN"
        f" (or the token in {TOKEN_ENV})"
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


@click.command("fetch")
@click.argument("ref", metavar="NAME@VERSION")
@click.option(
    "--into",
    "into",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The directory the package is installed as (replaced whole, in one step).",
)
@click.option("--site", "site_url", required=True, help="The site's URL (https://HOST:PORT).")
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    required=True,
    show_envvar=True,
    help="The client's token ('client add' printed it).",
)
@json_option
def fetch(ref: str, into: Path, site_url: str, token: str, as_json: bool) -> None:
    """Install a package into DIR from the nearest servers that hold it (same location
    label first, then the site's other servers, then the site itself), falling back to
    the next source at once when one fails; every chunk verified against the signed
    manifest; resumable; DIR replaced atomically. Needs no home."""
    from packdist.client.fetch import fetch as run_fetch  # the network stack, only here

    def say(words: str) -> None:
        click.echo(f"packdist: {words}", err=True)

    result = run_fetch(ref, into, site_url, token, say)
    if as_json:
        print_json(result.to_json())
        return
    parts = [f"{human_bytes(n)} from {s}" for s, n in result.by_source.items() if n]
    if result.local:
        parts.append(f"{human_bytes(result.local)} already here")
    click.echo(
        f"{result.ref} in {result.into} ({', '.join(parts) or 'nothing to fetch'};"
        f" {result.seconds:.1f}s)"
    )
    sys.stdout.flush()
