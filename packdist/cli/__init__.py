"""The ``packdist`` command line (contract in ``shared/CONTRACT.md``)."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from packdist import __version__
from packdist.cli.common import home_option
from packdist.errors import PackdistError, UserError

#: each command and where it lives: a command's module is imported when it runs (or help
#: lists it), so ``status`` does not pay for the agent's and the site server's imports
COMMANDS = {
    "activate": ("activate_cmds", "activate"),
    "agent": ("agent_cmds", "agent"),
    "client": ("client_cmds", "client"),
    "distribute": ("job_cmds", "distribute"),
    "events": ("event_cmds", "events"),
    "fetch": ("fetch_cmds", "fetch"),
    "job": ("job_cmds", "job"),
    "operator": ("operator_cmds", "operator"),
    "package": ("package_cmds", "package"),
    "rollback": ("activate_cmds", "rollback"),
    "rollout": ("rollout_cmds", "rollout"),
    "server": ("server_cmds", "server"),
    "site": ("site_cmds", "site"),
    "status": ("status_cmds", "status"),
    "validate": ("validate_cmds", "validate"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = COMMANDS.get(cmd_name)
        if found is None:
            return None
        module, name = found
        command: click.Command = getattr(importlib.import_module(f"packdist.cli.{module}"), name)
        if cmd_name == "package" and isinstance(command, click.Group):
            from packdist.cli.remove_cmds import package_remove

            command.add_command(package_remove)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
