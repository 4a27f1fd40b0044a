"""What the commands run in a site's home say of the site's own processes and agents:
no site server running, agents refused lately (read in one small query each)."""

from __future__ import annotations

import time

import click

from packdist.cli.common import resolve_home
from packdist.service.fleet import refusals_shown
from packdist.service.presence import SitePresence, site_presence
from packdist.site.home import SiteHome


def presence() -> SitePresence:
    """Whether a site server runs on this home's store (one small read)."""
    store = SiteHome.open(resolve_home()).store()
    try:
        return site_presence(store, time.time())
    finally:
        store.close()


def refusals() -> dict[str, str]:
    """server -> the agent refused lately as that server's, in words."""
    store = SiteHome.open(resolve_home()).store()
    try:
        return refusals_shown(store, time.time())
    finally:
        store.close()


def warn_if_no_site(presence: SitePresence) -> None:
    """With no site server running, nothing moves: say so, on stderr."""
    if presence.message is not None:
        click.echo(f"packdist: {presence.message}", err=True)
