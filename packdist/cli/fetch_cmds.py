"""``packdist fetch``: a package into a directory on any machine, no home (the client side
of docs/clients.md). Its own module: it loads neither the site's nor the store's code."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from packdist.cli.common import json_option, print_json, token_file_option, token_from
from packdist.core.words import human_bytes
from packdist.errors import UserError

TOKEN_ENV = "PACKDIST_CLIENT_TOKEN"


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
    show_envvar=True,
    help="The client's token ('client add' printed it); the variable or --token-file keep"
    " it out of the process list.",
)
@token_file_option
@json_option
def fetch(
    ref: str, into: Path, site_url: str, token: str | None, token_file: str | None, as_json: bool
) -> None:
    """Install a package into DIR from the nearest servers that hold it (same location
    label first, then the site's other servers, then the site itself), falling back to
    the next source at once when one fails; every chunk verified against the signed
    manifest; resumable; DIR replaced atomically. Needs no home."""
    from packdist.client.fetch import fetch as run_fetch  # the network stack, only here

    token = token_from(token, token_file)
    if not token:
        raise UserError(f"fetch needs the client's token: --token, {TOKEN_ENV} or --token-file")

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
