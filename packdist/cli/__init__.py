"""The ``packdist`` command line (contract in ``shared/CONTRACT.md``)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from packdist import __version__
from packdist.cli import (
    agent_cmds,
    event_cmds,
    job_cmds,
    package_cmds,
    remove_cmds,
    server_cmds,
    site_cmds,
    status_cmds,
    validate_cmds,
)
from packdist.cli.common import home_option
from packdist.errors import PackdistError, UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="packdist")
@home_option
@click.option("-v", "--verbose", count=True, help="More log output on stderr.")
def cli(verbose: int) -> None:
    """packdist: publish versioned packages on a site and distribute them to servers."""
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


cli.add_command(site_cmds.site)
cli.add_command(server_cmds.server)
cli.add_command(agent_cmds.agent)
cli.add_command(package_cmds.package)
package_cmds.package.add_command(remove_cmds.package_remove)
cli.add_command(job_cmds.distribute)
cli.add_command(job_cmds.job)
cli.add_command(status_cmds.status)
cli.add_command(event_cmds.events)
cli.add_command(validate_cmds.validate)


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="packdist", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("packdist: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"packdist: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"packdist: {exc.message}", err=True)
        sys.exit(2)
    except PackdistError as exc:
        click.echo(f"packdist: {exc.message}", err=True)
        sys.exit(1)
    except OSError as exc:  # the file system said no (a home under a file, no permission...)
        click.echo(f"packdist: {_os_error_line(exc)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("packdist: interrupted", err=True)
        sys.exit(130)


def _os_error_line(exc: OSError) -> str:
    """``<strerror>: <filename>``, one line, as the shell's tools say it."""
    words = exc.strerror or str(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return ": ".join([words, *names]) if names else words
