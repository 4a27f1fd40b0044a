"""``packdist events``: the timeline the dashboard shows, from the site's database."""

from __future__ import annotations

import json
import sys
import time

import click

from packdist.cli.common import home_option, json_option, print_json, resolve_home
from packdist.core.timefmt import iso
from packdist.site.home import SiteHome
from packdist.site.views import event_json
from packdist.store.base import EventRecord

FOLLOW_POLL = 0.5  # seconds between two looks at the database with --follow


def event_line(e: EventRecord) -> str:
    """``2025-01-02T03:04:05Z  failure  job 3fa2c1  dp2  connection refused …``"""
    parts = [iso(e.at) or "", f"{e.kind:<9}"]
    if e.job_id:
        parts.append(f"job {e.job_id}")
    if e.server:
        parts.append(e.server)
    parts.append(e.message)
    return "  ".join(parts)


@click.command()
@home_option
@click.option("--job", "job_id", help="Only the events of this job.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Show the newest N events (0: all).",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they happen.")
@json_option
def events(job_id: str | None, limit: int, follow: bool, as_json: bool) -> None:
    """The event timeline: job created, attempts, failures with their cause, retries
    scheduled, installs, cancels, servers coming and going.

    With --json: one JSON list; with --json --follow: one JSON object per line (JSON Lines),
    starting with the newest N events."""
    home = SiteHome.open(resolve_home())
    store = home.store()
    try:
        if job_id is not None:
            store.get_job(job_id)  # an unknown job is an error, not an empty timeline
        found = store.recent_events(limit, job_id) if limit else store.events(job_id)
        if as_json and not follow:
            print_json([event_json(e) for e in found])
            return
        if not found and not follow and not as_json:
            click.echo("no events yet" if job_id is None else f"no events for job {job_id}")
            return
        last = 0
        for e in found:
            _emit(e, as_json)
            last = e.id
        if not follow:
            return
        try:
            while True:
                time.sleep(FOLLOW_POLL)
                for e in store.events(job_id, last):
                    _emit(e, as_json)
                    last = e.id
        except KeyboardInterrupt:  # the way out of --follow: not an error
            return
    finally:
        store.close()


def _emit(e: EventRecord, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(event_json(e)) + "\n")
    else:
        sys.stdout.write(event_line(e) + "\n")
    sys.stdout.flush()
