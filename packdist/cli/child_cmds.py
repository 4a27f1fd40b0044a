"""``packdist site add-child`` and ``packdist site children``: child sites, at the parent."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.markup import escape
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
from packdist.cli.server_cmds import check_url
from packdist.config_values import format_rate
from packdist.core.names import check_server_name
from packdist.core.rates import parse_rate
from packdist.core.schedule import Schedule
from packdist.errors import NotFound, UserError
from packdist.service import Service
from packdist.site.home import SiteHome
from packdist.site.views import child_sites


def link_options(f: Any) -> Any:
    """The options of a link to a child: bandwidth and schedule windows."""
    f = click.option(
        "--timezone",
        "zone",
        default="UTC",
        show_default=True,
        help="The time zone of the windows (e.g. Europe/Berlin).",
    )(f)
    f = click.option(
        "--window",
        "windows",
        multiple=True,
        metavar="'DAYS HH:MM-HH:MM'",
        help="When the link may carry packages, e.g. 'Mon-Fri 18:00-07:00' (repeatable;"
        " none: always). A window that closes pauses the transfer, keeping every chunk sent.",
    )(f)
    f = click.option(
        "--bandwidth",
        metavar="RATE",
        help="At most this rate to the child, all its transfers together (e.g. 10mbit, 2MB;"
        " 0: unlimited).",
    )(f)
    return f


def _bandwidth(text: str | None) -> float | None:
    if text is None:
        return None
    rate = parse_rate(text)
    return rate or None


def _schedule(windows: tuple[str, ...], zone: str) -> Schedule:
    """The windows given, in their time zone (a time zone without windows says nothing)."""
    if zone != "UTC" and not windows:
        raise UserError("--timezone says when the --window hours are: give the windows with it")
    return Schedule.parse(list(windows), zone)


@click.command("add-child")
@home_option
@click.argument("name")
@click.option("--url", required=True, help="Where this site reaches the child's 'site serve'.")
@link_options
@json_option
def site_add_child(
    name: str,
    url: str,
    bandwidth: str | None,
    windows: tuple[str, ...],
    zone: str,
    as_json: bool,
) -> None:
    """Register a child site and print its token (shown once).

    The child is an ordinary site ('site init' in its own home) that joins with
    'site serve --parent THIS_SITE_URL --token TOKEN'; its servers are enrolled there and
    named CHILD/SERVER here."""
    check_server_name(name)
    url = check_url(url, "child site URL")
    rate, schedule = _bandwidth(bandwidth), _schedule(windows, zone)
    home = SiteHome.open(resolve_home())
    token = new_token(home.authority().fingerprint)  # the child verifies this site with it
    store = home.store()
    try:
        Service(store, operator_name()).add_child(
            name, url, hash_token(token), time.time(), rate, schedule
        )
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


@click.command("set-child")
@home_option
@click.argument("name")
@link_options
@click.option("--always", is_flag=True, help="No windows: the link is always open.")
def site_set_child(
    name: str, bandwidth: str | None, windows: tuple[str, ...], zone: str, always: bool
) -> None:
    """Change the link to a child site: its bandwidth and its windows (what is not given
    stays as it was). A running site applies it from its next transfer."""
    if always and windows:
        raise UserError("--always and --window contradict each other")
    given = (
        _schedule(windows, zone) if windows or zone != "UTC" else None
    )  # refused before anything is read
    store = SiteHome.open(resolve_home()).store()
    try:
        child = store.child_site(name)
        if child is None:
            raise NotFound(f"no child site named {name}")
        rate = child.bandwidth if bandwidth is None else _bandwidth(bandwidth)
        schedule = Schedule.from_json(child.windows)
        if always:
            schedule = Schedule()
        elif given is not None:
            schedule = given
        Service(store, operator_name()).set_child_link(name, rate, schedule, time.time())
    finally:
        store.close()
    click.echo(
        f"link to child site {name}: {format_rate(rate) if rate else 'unlimited'},"
        f" windows: {schedule.text()}"
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
            print_json({"children": child_sites(store, now)})
            return
        children = Service(store).child_sites(now)
    finally:
        store.close()
    if not children:
        click.echo("no child sites yet (add one with 'packdist site add-child NAME --url URL')")
        return
    table = Table(box=None)
    for col in ("child site", "url", "state", "last report", "servers online", "link"):
        table.add_column(col)
    for c in children:
        up = sum(1 for s in c.servers if s.online)
        link = format_rate(c.bandwidth) if c.bandwidth else "unlimited"
        if c.schedule.windows:
            link += f", {c.schedule.closed_words(now) or 'window open'}"
        table.add_row(
            escape(c.name if c.site_name in (None, c.name) else f"{c.name} ({c.site_name})"),
            escape(c.url),
            c.state,
            ago(c.last_seen, now),
            f"{up} of {len(c.servers)}",
            escape(link),
        )
    print_table(table)
