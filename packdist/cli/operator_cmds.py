"""``packdist operator …``: the people who may use the dashboard and its API, and their roles.

Run in the site's home (on the site host): the operators live in ``HOME/operator.json``
(see :mod:`packdist.site.operator`). A running site takes each change at its next request.
"""

from __future__ import annotations

import click

from packdist.cli.common import home_option, iso, json_option, print_json, resolve_home
from packdist.site.home import SiteHome
from packdist.site.operator import Role, check_name, parse_role
from packdist.site.operator_book import (
    add_operator,
    list_operators,
    remove_operator,
    reset_operator,
)

ROLES = ", ".join(r.value for r in Role)


@click.group()
@home_option
def operator() -> None:
    """Add, list, reset and remove the site's operators (dashboard and API logins)."""


@operator.command("add")
@home_option
@click.argument("name")
@click.option(
    "--role",
    "role_name",
    required=True,
    metavar="ROLE",
    help="viewer (reads the dashboard, the API and /metrics), operator (also cancels and"
    " retries jobs over the API) or admin (everything).",
)
@json_option
def operator_add(name: str, role_name: str, as_json: bool) -> None:
    """Add operator NAME with a role; prints its credential once (its login and bearer)."""
    check_name(name)
    role = parse_role(role_name)
    root = resolve_home()
    SiteHome.open(root)
    password = add_operator(root, name, role)
    if as_json:
        print_json({"name": name, "role": role.value, "password": password})
        return
    click.echo(f"operator {name} added with role {role.value}. Its credential (shown once):")
    click.echo(password)


@operator.command("list")
@home_option
@json_option
def operator_list(as_json: bool) -> None:
    """List the operators and their roles (never a credential)."""
    root = resolve_home()
    SiteHome.open(root)
    found = list_operators(root)
    if as_json:
        print_json(
            {
                "operators": [
                    {"name": o.name, "role": o.role.value, "created_at": iso(o.created_at)}
                    for o in found
                ]
            }
        )
        return
    if not found:
        click.echo("no operators ('packdist site operator-password' makes admin)")
        return
    width = max(len(o.name) for o in found)
    for o in found:
        click.echo(f"{o.name:<{width}}  {o.role.value:<8}  added {iso(o.created_at)}")


@operator.command("reset")
@home_option
@click.argument("name")
@json_option
def operator_reset(name: str, as_json: bool) -> None:
    """Give operator NAME a new credential (printed once); the old one and its dashboard
    sessions stop working, also on a running site."""
    root = resolve_home()
    SiteHome.open(root)
    made, password = reset_operator(root, name)
    if as_json:
        print_json({"name": made.name, "role": made.role.value, "password": password})
        return
    click.echo(f"operator {made.name} has a new credential (shown once):")
    click.echo(password)


@operator.command("remove")
@home_option
@click.argument("name")
@json_option
def operator_remove(name: str, as_json: bool) -> None:
    """Remove operator NAME: its credential and its dashboard sessions stop working."""
    root = resolve_home()
    SiteHome.open(root)
    gone = remove_operator(root, name)
    if as_json:
        print_json({"name": gone.name, "removed": True})
        return
    click.echo(f"operator {gone.name} removed")


__all__ = ["ROLES", "operator"]
