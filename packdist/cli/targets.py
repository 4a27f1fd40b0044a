"""Which servers a command aims at: ``--to S1,S2``, ``--group G``, ``--all`` or ``--site
CHILD`` (exactly one), shared by ``distribute``, ``activate`` and ``rollback``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from packdist.errors import NoTargets, UserError
from packdist.service.targets import resolve_targets
from packdist.store.base import Store


def target_options(child_sites: bool = True) -> Callable[[Any], Any]:
    """The options naming the targets (``--site`` only where child sites make sense)."""

    def add(f: Any) -> Any:
        if child_sites:
            f = click.option(
                "--site",
                "child",
                metavar="CHILD",
                help="Every server of this child site and of its own children.",
            )(f)
        f = click.option("--all", "all_servers", is_flag=True, help="Every server.")(f)
        f = click.option("--group", "group", help="Every server of this group.")(f)
        return click.option("--to", "to", help="Comma-separated server names.")(f)

    return add


def one_target_option(
    to: str | None,
    group: str | None,
    all_servers: bool,
    child: str | None = None,
    child_sites: bool = True,
) -> None:
    """Refuse none, or several, of the options (before anything else is looked up)."""
    chosen = [x for x in (to, group, all_servers or None, child) if x]
    if len(chosen) != 1:
        options = "--to, --group, --all or --site" if child_sites else "--to, --group or --all"
        raise UserError(f"choose the targets with exactly one of {options}")


def choose_targets(
    store: Store,
    to: str | None,
    group: str | None,
    all_servers: bool,
    child: str | None = None,
    child_sites: bool = True,
) -> list[str]:
    """The servers named by exactly one of the options; a clear error if none is given,
    several are, or what is named has no servers. ``child_sites``: whether the command
    has ``--site`` (for the words of that error)."""
    one_target_option(to, group, all_servers, child, child_sites)
    if to:
        names = to.split(",")
        if not any(n.strip() for n in names):
            raise NoTargets("--to names no server")
        return resolve_targets(store, names=names)
    return resolve_targets(store, group=group, every=all_servers, child=child)
