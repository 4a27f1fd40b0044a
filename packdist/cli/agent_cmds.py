"""``packdist agent …``"""

from __future__ import annotations

import click

from packdist.cli.common import home_option, resolve_home


@click.group()
@home_option
def agent() -> None:
    """Run the agent of a distribution server."""


@agent.command("serve")
@home_option
@click.option("--listen", default="0.0.0.0:8701", show_default=True, help="HOST:PORT")
@click.option("--site", "site_url", required=True, help="URL of the site server.")
@click.option(
    "--token", required=True, envvar="PACKDIST_TOKEN", help="Enrollment token from 'server add'."
)
def agent_serve(listen: str, site_url: str, token: str) -> None:
    """Serve installs for the site until SIGTERM/SIGINT."""
    from packdist.agent.server import run_agent

    run_agent(resolve_home(), listen, site_url.rstrip("/"), token)
