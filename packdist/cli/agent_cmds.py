"""``packdist agent …``"""

from __future__ import annotations

import click

from packdist.cli.common import home_option, resolve_home, token_file_option, token_from
from packdist.core.homelock import lock_home
from packdist.core.names import check_site_url
from packdist.core.rates import parse_rate, parse_size
from packdist.errors import UserError


@click.group()
@home_option
def agent() -> None:
    """Run the agent of a distribution server."""


@agent.command("serve")
@home_option
@click.option(
    "--listen",
    default="0.0.0.0:8701",
    show_default=True,
    envvar="PACKDIST_AGENT_LISTEN",
    help="HOST:PORT",
)
@click.option(
    "--site",
    "site_url",
    required=True,
    envvar="PACKDIST_SITE",
    help="URL of the site server; a site run by several workers: URL1,URL2,... (any that"
    " answers is used).",
)
@click.option(
    "--token",
    envvar="PACKDIST_TOKEN",
    help="Enrollment token from 'server add' (env PACKDIST_TOKEN or --token-file keep it out"
    " of the process list).",
)
@token_file_option
@click.option(
    "--download-limit",
    default="0",
    envvar="PACKDIST_AGENT_DOWNLOAD_LIMIT",
    metavar="RATE",
    help="Most bytes per second fetched from the site and peers together, e.g. 100mbit or "
    "12MB (0: no limit).",
)
@click.option(
    "--upload-limit",
    default="0",
    envvar="PACKDIST_AGENT_UPLOAD_LIMIT",
    metavar="RATE",
    help="Most bytes per second served to peers (0: no limit).",
)
@click.option(
    "--cache-limit",
    default="2GiB",
    show_default=True,
    envvar="PACKDIST_AGENT_CACHE_LIMIT",
    metavar="SIZE",
    help="Most bytes the chunk cache (removed versions, unfinished installs) keeps, e.g. "
    "500MiB or 10G; the least recently used go first (0: removed versions are deleted).",
)
@click.option(
    "--plain-http",
    is_flag=True,
    envvar="PACKDIST_AGENT_PLAIN_HTTP",
    help="Serve plain HTTP instead of HTTPS (a lab on loopback only: traffic can be read).",
)
def agent_serve(
    listen: str,
    site_url: str,
    token: str | None,
    token_file: str | None,
    download_limit: str,
    upload_limit: str,
    cache_limit: str,
    plain_http: bool,
) -> None:
    """Serve installs for the site until SIGTERM/SIGINT."""
    from packdist.agent.server import Limits, run_agent
    from packdist.auth import looks_like_token
    from packdist.process import check_bindable

    token = token_from(token, token_file)
    if token is None:
        raise UserError("agent serve needs its token: --token, PACKDIST_TOKEN or --token-file")
    if not looks_like_token(token.strip()):  # never echoed: it may be a real secret mistyped
        raise UserError(
            "--token / PACKDIST_TOKEN is not an enrollment token ('server add' prints one)"
        )
    for url in site_url.split(","):
        check_site_url(url, "--site / PACKDIST_SITE")
    limits = Limits(download=parse_rate(download_limit), upload=parse_rate(upload_limit))
    try:
        cache_bytes = parse_size(cache_limit)
    except ValueError as exc:
        raise UserError(
            f"--cache-limit / PACKDIST_AGENT_CACHE_LIMIT {exc} (got {cache_limit!r})"
        ) from None
    if plain_http:
        click.echo(
            "packdist agent: WARNING: --plain-http: serving without TLS, traffic can be read"
            " and changed on the path; for a lab on loopback only",
            err=True,
        )
    root = resolve_home()
    _lock = lock_home(root, "agent")  # one agent per home, until this process ends
    check_bindable(listen)  # a port in use: one line, before anything starts
    run_agent(
        root,
        listen,
        site_url.rstrip("/"),
        token.strip(),
        limits,
        cache_bytes,
        plain_http,
    )
    del _lock
