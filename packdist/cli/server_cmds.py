"""``packdist server …``"""

from __future__ import annotations

import time

import click
from rich.table import Table

from packdist.auth import hash_token, new_token
from packdist.cli.common import (
    ago,
    home_option,
    iso,
    json_option,
    operator_name,
    print_json,
    print_table,
    resolve_home,
)
from packdist.core.names import (
    check_group_name,
    check_host,
    check_new_server_name,
    parse_label,
    url_host,
)
from packdist.core.words import counted, human_bytes
from packdist.errors import UserError
from packdist.service import Service
from packdist.service.fleet import refusals_shown
from packdist.site.home import SiteHome
from packdist.site.views import online, online_after


def check_url(url: str, what: str = "server URL") -> str:
    if not (url.startswith("http://") or url.startswith("https://")) or len(url) < 10:
        raise UserError(f"{what} {url!r} must start with http:// or https://")
    try:
        host = url_host(url)
    except ValueError as exc:
        raise UserError(f"{what} {url!r}: {exc}") from None
    check_host(host or "")  # its certificate will name it
    return url.rstrip("/")


@click.group()
@home_option
def server() -> None:
    """Enroll and manage distribution servers."""


@server.command("add")
@home_option
@click.argument("name")
@click.option("--url", required=True, help="Where the site reaches the server's agent.")
@click.option("--group", "groups", multiple=True, help="Group to join (repeatable).")
@click.option(
    "--label",
    "label_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Location label, e.g. site=berlin (repeatable). Peers with the same location label "
    "(key peers.location_label, default 'site') are preferred as chunk sources.",
)
@json_option
def server_add(
    name: str, url: str, groups: tuple[str, ...], label_args: tuple[str, ...], as_json: bool
) -> None:
    """Register a distribution server and print its enrollment token."""
    check_new_server_name(name)
    url = check_url(url)
    for g in groups:
        check_group_name(g)
    labels = dict(parse_label(x) for x in label_args)
    home = SiteHome.open(resolve_home())
    token = new_token(home.authority().fingerprint)  # the agent verifies the site with it
    store = home.store()
    try:
        Service(store, operator_name()).add_server(
            name, url, hash_token(token), list(groups), labels, time.time()
        )
    finally:
        store.close()
    if as_json:
        print_json(
            {"name": name, "token": token, "url": url, "groups": list(groups), "labels": labels}
        )
    else:
        click.echo(f"server {name} added. Its enrollment token (shown once):")
        click.echo(token)
        click.echo(
            f"run on {name}, with the token in a file only its agent reads (not in the process"
            " list): packdist agent serve --listen HOST:PORT --site SITE_URL"
            " --token-file FILE (or PACKDIST_TOKEN in its environment)"
        )


@server.command("token")
@home_option
@click.argument("name")
@json_option
def server_token(name: str, as_json: bool) -> None:
    """Give a server a new enrollment token (printed once): the old one stops working, on a
    running site within seconds; the server's work goes on (nothing is cancelled)."""
    home = SiteHome.open(resolve_home())
    token = new_token(home.authority().fingerprint)
    store = home.store()
    try:
        Service(store, operator_name()).reissue_token(name, hash_token(token), time.time())
    finally:
        store.close()
    if as_json:
        print_json({"name": name, "token": token})
    else:
        click.echo(
            f"server {name}: a new enrollment token (shown once; the old one no longer works):"
        )
        click.echo(token)
        click.echo(
            f"run on {name}, with the token in a file only its agent reads (not in the process"
            " list): packdist agent serve --listen HOST:PORT --site SITE_URL"
            " --token-file FILE (or PACKDIST_TOKEN in its environment)"
        )


@server.command("list")
@home_option
@json_option
def server_list(as_json: bool) -> None:
    """List distribution servers."""
    home = SiteHome.open(resolve_home())
    store = home.store()
    try:
        servers = store.list_servers()
        now = time.time()
        refused = refusals_shown(store, now)
    finally:
        store.close()
    after = online_after(len(servers))
    if as_json:
        print_json(
            {
                "servers": [
                    {
                        "name": s.name,
                        "url": s.url,
                        "groups": list(s.groups),
                        "labels": dict(s.labels),
                        "online": online(s, now, after),
                        "last_seen": iso(s.last_seen),
                        "disk_free": s.disk_free,
                        "refused": refused.get(s.name),  # an agent refused lately
                    }
                    for s in servers
                ]
            }
        )
        return
    if not servers:
        click.echo("no servers yet (add one with 'packdist server add NAME --url URL')")
        return
    table = Table(box=None)
    for col in ("server", "url", "groups", "labels", "online", "last heartbeat", "free disk"):
        table.add_column(col)
    for s in servers:
        up = online(s, now, after)
        table.add_row(
            s.name,
            s.url,
            ",".join(s.groups),
            ",".join(f"{k}={v}" for k, v in s.labels),
            "yes" if up else "no",
            ago(s.last_seen, now),
            human_bytes(s.disk_free) if s.disk_free is not None else "-",
        )
    print_table(table)
    for words in refused.values():
        click.echo(words)


@server.command("remove")
@home_option
@click.argument("name")
@json_option
def server_remove(name: str, as_json: bool) -> None:
    """Remove a server; its unfinished instructions are cancelled."""
    child, slash, rest = name.partition("/")
    if slash:  # kept from the child's reports: removed there, it goes here too
        raise UserError(
            f"{name} is a server of child site {child}: remove it there"
            f" ('packdist server remove {rest}' in the child's home)"
        )
    home = SiteHome.open(resolve_home())
    store = home.store()
    try:
        cancelled = Service(store, operator_name()).remove_server(name, time.time())
    finally:
        store.close()
    if as_json:
        print_json({"name": name, "removed": True, "cancelled": cancelled})
        return
    extra = f"; {counted(cancelled, 'unfinished instruction')} cancelled" if cancelled else ""
    click.echo(f"server {name} removed{extra}")
