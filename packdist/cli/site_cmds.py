"""``packdist site …``"""

from __future__ import annotations

import click

from packdist.cli.common import home_option, json_option, print_json, resolve_home
from packdist.site.home import SiteHome


@click.group()
@home_option
def site() -> None:
    """Create and run the site server."""


@site.command("init")
@home_option
@click.option("--name", help="Site name (default: the host name).")
@json_option
def site_init(name: str | None, as_json: bool) -> None:
    """Create a site in the home: database, content library, signing key."""
    root = resolve_home()
    home = SiteHome.init(root, name)
    store = home.store()
    try:
        site_name = store.site_name()
    finally:
        store.close()
    if as_json:
        print_json({"site": site_name, "home": str(root)})
    else:
        click.echo(f"site {site_name} created in {root}")


@site.command("serve")
@home_option
@click.option("--listen", default="127.0.0.1:8700", show_default=True, help="HOST:PORT")
@click.option("--workers", default=64, show_default=True, help="Instructions in flight at once.")
def site_serve(listen: str, workers: int) -> None:
    """Run the site server (API, despooler) until SIGTERM/SIGINT."""
    from packdist.site.server import run_site

    home = SiteHome.open(resolve_home())
    run_site(home, listen, workers)
