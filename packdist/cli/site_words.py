"""What the commands run in a site's home say of the site's own processes and agents: no
site server running, agents refused lately, read with the job a command shows (one opening
of the store for all)."""

from __future__ import annotations

import time

import click

from packdist.cli.common import resolve_home
from packdist.service.presence import SitePresence, site_presence
from packdist.site.home import SiteHome
from packdist.states import InstructionState
from packdist.store.base import JobRecord, Store

SITE_LOOKS = 2.0  # seconds between two reads of whether a site server runs, while waiting


class SiteWatch:
    """Whether a site server still runs (or runs again) while a command waits, read every
    ``SITE_LOOKS`` seconds: a site stopped meanwhile is said once, as at the start."""

    def __init__(self, store: Store, halted: str | None, warn: bool) -> None:
        self.store = store
        self.halted = halted  # what to say while none runs (None: one runs)
        self.warn = warn
        self._looked = time.monotonic()

    def look(self, at: float) -> str | None:
        """The words of a halted site as of ``at`` (monotonic), read again when due."""
        if at - self._looked >= SITE_LOOKS:
            self._looked = at
            presence = site_presence(self.store, time.time())
            if self.halted is None and self.warn:
                warn_if_no_site(presence)
            self.halted = presence.message
        return self.halted


def warn_if_no_site(presence: SitePresence) -> None:
    """With no site server running, nothing moves: say so, on stderr."""
    if presence.message is not None:
        click.echo(f"packdist: {presence.message}", err=True)


def job_and_site(
    job_id: str,
    state: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    refusals: bool = False,
) -> tuple[JobRecord, SitePresence, dict[str, str]]:
    """The job, whether a site server runs, and (with ``refusals``) the agents refused
    lately: one opening of the store for all three."""
    store = SiteHome.open(resolve_home()).store()
    try:
        states = None if state is None else [InstructionState(state)]
        job = store.get_job(job_id, states, limit, offset)
        now = time.time()
        refused: dict[str, str] = {}
        if refusals:  # (the fleet's use cases: only for the table of ``job show``)
            from packdist.service.fleet import refusals_shown

            refused = refusals_shown(store, now)
        return job, site_presence(store, now), refused
    finally:
        store.close()
