"""``packdist rollout``: a package onto servers in waves (service/rollouts.py). The site's
serve loop starts each wave once the one before is installed; these commands create,
show, pause, resume and cancel rollouts, and work whether or not ``site serve`` runs."""

from __future__ import annotations

import shlex
import time
from typing import Any

import click
from rich.table import Table

from packdist import config
from packdist.cli.common import (
    home_option,
    json_option,
    operator_name,
    print_json,
    print_table,
    resolve_home,
)
from packdist.cli.durations import Duration
from packdist.cli.targets import choose_targets, one_target_option, target_options
from packdist.core.names import parse_ref
from packdist.core.schedule import Schedule
from packdist.core.timefmt import iso
from packdist.core.words import counted
from packdist.errors import NotFound, UserError
from packdist.service import Service
from packdist.service.rollout_plan import parse_waves
from packdist.service.rollouts import (
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_WAVE_TIMEOUT,
    DONE_WORDS,
    RolloutPlan,
)
from packdist.site.home import SiteHome
from packdist.site.rollout_views import rollout_json, wave_counts
from packdist.store.base import Store


@click.group()
def rollout() -> None:
    """Roll a package out in waves: each starts once the one before is installed."""


@rollout.command("create")
@home_option
@click.argument("ref")
@target_options(child_sites=False)
@click.option(
    "--waves",
    required=True,
    metavar="W1,W2,...",
    help="Cumulative wave sizes, counts or percentages of the targets: 1,25%,100%.",
)
@click.option(
    "--error-threshold",
    type=float,
    default=0.0,
    show_default=True,
    metavar="PCT",
    help="Percent of a wave that may fail before the rollout pauses.",
)
@click.option(
    "--wave-timeout",
    type=Duration(minimum=1),
    default=DEFAULT_WAVE_TIMEOUT,
    show_default=True,
    metavar="DURATION",
    help="A server of a wave not installed this long after it started counts as failed.",
)
@click.option("--activate", is_flag=True, help="Make the version active on each server.")
@click.option(
    "--health-check",
    metavar="CMD",
    help="With --activate: a program of the package (path in it, and arguments) the agent"
    " runs in the installed tree before the switch; failing, the server keeps its version.",
)
@click.option(
    "--health-timeout",
    type=Duration(minimum=1),
    default=DEFAULT_HEALTH_TIMEOUT,
    show_default=True,
    metavar="SECS",
    help="Seconds the health check may take.",
)
@click.option(
    "--window",
    "windows",
    multiple=True,
    metavar="'DAYS HH:MM-HH:MM'",
    help="A wave starts only inside one of these windows (repeatable).",
)
@click.option("--timezone", default="UTC", show_default=True, help="Of the windows.")
@json_option
def create(
    ref: str,
    to: str | None,
    group: str | None,
    all_servers: bool,
    waves: str,
    error_threshold: float,
    wave_timeout: float,
    activate: bool,
    health_check: str | None,
    health_timeout: float,
    windows: tuple[str, ...],
    timezone: str,
    as_json: bool,
) -> None:
    """Create a rollout of NAME@VERSION to servers, in waves."""
    one_target_option(to, group, all_servers, child_sites=False)
    name, version = parse_ref(ref)
    sizes = parse_waves(waves)
    schedule = Schedule.parse(list(windows), timezone)
    check = _command(health_check)
    home = resolve_home()
    site = SiteHome.open(home)
    label = config.load(home).settings.peers_location_label
    store = site.store()
    try:
        pkg = store.find_package(name, version)
        if pkg is None:
            raise NotFound(f"no package {name}@{version}")
        targets = choose_targets(store, to, group, all_servers, child_sites=False)
        plan = RolloutPlan(
            pkg.id,
            targets,
            sizes,
            error_threshold=error_threshold,
            wave_timeout=wave_timeout,
            activate=activate,
            health_check=check,
            health_timeout=health_timeout,
            schedule=schedule,
            spread=None if to else label,  # --to: the order given
        )
        service = Service(store, operator_name())
        rollout_id = service.create_rollout(plan, time.time())
        made = service.get_rollout(rollout_id)
    finally:
        store.close()
    if as_json:
        print_json({"rollout": rollout_id, **rollout_json(made)})
        return
    sizes_text = ", ".join(str(len(w.servers)) for w in made.waves)
    click.echo(
        f"rollout {rollout_id}: {made.package_ref} to {counted(len(made.servers), 'server')}"
        f" in {len(made.waves)} waves ({sizes_text}); 'site serve' starts the first within a second"
    )


def _command(text: str | None) -> list[str] | None:
    """The health check's words (checked by the service: a program inside the package)."""
    if text is None:
        return None
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UserError(f"--health-check {text!r}: {exc}") from None
    if not words:
        raise UserError("--health-check is empty")
    return words


@rollout.command("show")
@home_option
@click.argument("rollout_id", metavar="ID")
@json_option
def show(rollout_id: str, as_json: bool) -> None:
    """A rollout, wave by wave."""
    found, counts = _read(lambda s: (r := Service(s).get_rollout(rollout_id), wave_counts(s, r)))
    if as_json:
        print_json(rollout_json(found, counts))
        return
    click.echo(f"rollout {found.id}: {found.package_ref} {found.state.value}")
    if found.why:
        click.echo(f"  {found.why}")
    table = Table(box=None)
    for col in ("wave", "servers", "state", "installed", "failed", "job"):
        table.add_column(col)
    for w in found.waves:
        c = counts.get(w.job_id or "", {})
        table.add_row(
            str(w.number),
            _names(list(w.servers)),
            w.state.value,
            f"{c.get('installed', 0)}/{len(w.servers)}" if w.job_id else "-",
            str(w.failed if w.failed is not None else c.get("failed", 0)) if w.job_id else "-",
            w.job_id or "-",
        )
    print_table(table)


@rollout.command("list")
@home_option
@json_option
def list_rollouts(as_json: bool) -> None:
    """Rollouts, newest first."""
    found = _read(lambda s: s.rollouts())
    if as_json:
        print_json({"rollouts": [rollout_json(r) for r in found]})
        return
    if not found:
        click.echo("no rollouts yet")
        return
    table = Table(box=None)
    for col in ("rollout", "package", "state", "waves", "created"):
        table.add_column(col)
    for r in found:
        started = sum(1 for w in r.waves if w.job_id is not None)
        table.add_row(
            r.id,
            r.package_ref,
            r.state.value,
            f"{started}/{len(r.waves)} started",
            iso(r.created_at),
        )
    print_table(table)


def _operator(verb: str, doc: str) -> click.Command:
    @home_option
    @click.argument("rollout_id", metavar="ID")
    def run(rollout_id: str) -> None:
        def act(store: Store) -> str:
            service = Service(store, operator_name())
            now = time.time()
            if verb == "cancel":
                n = service.cancel_rollout(rollout_id, now)
                return f"rollout {rollout_id} cancelled ({counted(n, 'unfinished instruction')} cancelled)"
            getattr(service, f"{verb}_rollout")(rollout_id, now)
            return f"rollout {rollout_id} {DONE_WORDS[verb]}"

        click.echo(_read(act))

    run.__doc__ = doc
    return click.command(verb)(run)


rollout.add_command(
    _operator("pause", "Pause a rollout: no later wave starts (started ones go on).")
)
rollout.add_command(_operator("resume", "Let a paused rollout go on with its next wave."))
rollout.add_command(
    _operator("cancel", "Cancel a rollout and its unfinished instructions (installs stay).")
)


def _read(fn: Any) -> Any:
    store = SiteHome.open(resolve_home()).store()
    try:
        return fn(store)
    finally:
        store.close()


def _names(servers: list[str]) -> str:
    return (
        ", ".join(servers) if len(servers) <= 3 else f"{', '.join(servers[:2])} +{len(servers) - 2}"
    )
