"""``packdist site …``"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from packdist import config
from packdist.cli.child_cmds import site_add_child, site_children, site_set_child
from packdist.cli.common import (
    folded,
    home_option,
    json_option,
    print_json,
    resolve_home,
    token_file_option,
    token_from,
)
from packdist.core.homelock import lock_home
from packdist.errors import UserError
from packdist.site import operator
from packdist.site.home import SiteHome
from packdist.store.postgres import redacted

F = TypeVar("F", bound=Callable[..., Any])

_METAVARS = {
    "text": "HOST:PORT",
    "int": "N",
    "number": "X",
    "duration": "DURATION",
    "rate": "RATE",
    "label": "KEY",
    "hosts": "HOSTS",
}


def setting_options(f: F) -> F:
    """One flag per setting (``--retry-cap``, ...); a flag not given leaves the value to the
    environment, the config file or the default (see docs/configuration.md)."""
    for spec in reversed(config.SPECS):
        help_text = f"{spec.help[:1].upper()}{spec.help[1:]} (env {spec.env})."
        if spec.kind == "bool":
            opt = click.option(
                f"{spec.flag}/--no-{spec.flag[2:]}", spec.name, default=None, help=help_text
            )
        else:
            opt = click.option(
                spec.flag, spec.name, default=None, metavar=_METAVARS[spec.kind], help=help_text
            )
        f = opt(f)
    return f


def _flags(values: dict[str, Any]) -> dict[str, Any]:
    return {name: values.get(name) for name in config.BY_NAME}


@click.group()
@home_option
def site() -> None:
    """Create and run the site server."""


site.add_command(site_add_child)
site.add_command(site_children)
site.add_command(site_set_child)


@site.command("init")
@home_option
@click.option("--name", help="Site name (default: the host name).")
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="A postgresql:// URL for the store (default: SQLite in the home). With PostgreSQL,"
    " several 'site serve' processes can run one site.",
)
@json_option
def site_init(name: str | None, store_url: str | None, as_json: bool) -> None:
    """Create a site in the home: database, content library, signing key, operator
    password (printed once) and a commented packdist.toml."""
    root = resolve_home()
    home = SiteHome.init(root, name, store_url)
    store = home.store()
    try:
        site_name = store.site_name()
    finally:
        store.close()
    config_path = config.write_default(root)
    password = operator.create(root)
    fingerprint = home.authority().fingerprint
    listen = config.Settings().listen
    if as_json:
        print_json(
            {
                "site": site_name,
                "home": str(root),
                "operator": operator.ADMIN,
                "operator_password": password,
                "config": str(config_path),
                "ca_fingerprint": fingerprint,
            }
        )
    else:
        click.echo(f"site {site_name} created in {root}")
        if store_url is not None:
            click.echo(f"store: {redacted(store_url)}")
        click.echo(
            f"operator password of {operator.ADMIN} (role admin; shown once; the dashboard's"
            f" login, 'packdist operator add' makes more): {password}"
        )
        click.echo(f"configuration: {config_path} (every setting commented at its default)")
        click.echo(f"certificate authority: {fingerprint} (every enrollment token carries it)")
        click.echo(
            "dashboard: once 'packdist site serve' runs, open https://HOST:PORT/ of its listen"
            f" address (default https://{listen}/) and log in with this password"
        )


@site.command("serve")
@home_option
@click.option(
    "--parent",
    metavar="URL",
    help="Join a parent site as its child site (the URL of the parent's 'site serve').",
)
@click.option(
    "--token",
    envvar="PACKDIST_PARENT_TOKEN",
    metavar="TOKEN",
    help="With --parent: the token 'packdist site add-child' printed at the parent"
    " (env PACKDIST_PARENT_TOKEN or --token-file keep it out of the process list).",
)
@token_file_option
@setting_options
def site_serve(
    parent: str | None, token: str | None, token_file: str | None, **values: Any
) -> None:
    """Run the site server (API, despooler, dashboard) until SIGTERM/SIGINT.

    Settings come from the flags, else PACKDIST_* variables, else HOME/packdist.toml, else
    the defaults ('packdist site config' shows them)."""
    from packdist.process import check_bindable
    from packdist.site.parent_link import check_parent
    from packdist.site.server import run_site

    token = token_from(token, token_file)
    if (parent is None) != (token is None):
        raise UserError("--parent and --token go together: the parent's URL and this site's token")
    if parent is not None and token is not None:
        parent = check_parent(parent, token)
    root = resolve_home()
    home = SiteHome.open(root)
    settings = config.load(root, _flags(values)).settings
    if parent is not None and parent.startswith("http://") and not settings.plain_http:
        raise UserError(
            f"--parent {parent}: a child site learns its parent's key over TLS; give the"
            " parent's https:// URL (or run with --plain-http, for a lab on loopback only)"
        )
    scheme = "http" if settings.plain_http else "https"
    # one process on a SQLite home (several workers share a PostgreSQL store); held until
    # this process ends
    _lock = lock_home(root, "site server") if home.store_url() is None else None
    check_bindable(settings.listen)  # a port in use: one line, before anything starts
    if settings.plain_http:
        click.echo(
            "packdist site: WARNING: --plain-http: serving without TLS, traffic (tokens"
            " included) can be read and changed on the path; for a lab on loopback only",
            err=True,
        )

    def listening() -> None:  # said once the address is bound, not before
        click.echo(
            f"packdist site: listening on {scheme}://{settings.listen}; dashboard at"
            f" {scheme}://{settings.listen}/ (operator credentials: 'site init', 'operator add')",
            err=True,
        )
        if parent is not None and token is not None:
            click.echo(f"packdist site: a child site of {parent}", err=True)

    run_site(
        home,
        settings.listen,
        settings.workers,
        settings,
        None if parent is None or token is None else (parent, token),
        listening,
    )
    del _lock


@site.command("config")
@home_option
@setting_options
@json_option
def site_config(as_json: bool, **values: Any) -> None:
    """Show the effective settings and where each came from (flag, env, file, default).

    Takes the same flags as 'site serve', so it shows what that command line would use."""
    root = resolve_home()
    SiteHome.open(root)
    loaded = config.load(root, _flags(values))
    s = loaded.settings
    if as_json:
        print_json(
            {
                "file": str(loaded.path),
                "file_exists": loaded.file_exists,
                "settings": {
                    spec.name: {
                        "value": getattr(s, spec.name),
                        "source": loaded.sources[spec.name],
                        "file_key": spec.toml_path,
                        "env": spec.env,
                        "flag": spec.flag,
                    }
                    for spec in config.SPECS
                },
            }
        )
        return
    table = Table(box=None)
    for col in ("setting", "value", "from"):
        table.add_column(col)
    for spec in config.SPECS:
        source = loaded.sources[spec.name]
        table.add_row(
            escape(spec.toml_path),
            escape(s.display(spec.name)),
            source if source == "default" else f"[bold]{source}[/bold]",
        )
    console = Console()
    state = "" if loaded.file_exists else " (absent: defaults, environment and flags only)"
    console.print(f"config file: {escape(str(loaded.path))}{state}")
    console.print(folded(table))
    console.print(
        "from: flag > env > file > default. Each setting section.key is also the variable"
        " PACKDIST_SECTION_KEY and the flag --section-key (e.g. retry.cap: PACKDIST_RETRY_CAP,"
        " --retry-cap; listen: PACKDIST_LISTEN, --listen)."
    )


@site.command("operator-password")
@home_option
@json_option
def site_operator_password(as_json: bool) -> None:
    """Create or replace the credential of the operator admin (role admin: dashboard login,
    API and /metrics bearer).

    The new credential is printed once; the old one and every dashboard session of admin
    stop working, also on a running site. Other operators are kept ('packdist operator')."""
    root = resolve_home()
    SiteHome.open(root)
    password = operator.create(root)
    if as_json:
        print_json({"operator": operator.ADMIN, "operator_password": password})
    else:
        click.echo(f"operator {operator.ADMIN} credential (shown once): {password}")
