"""Small pieces of the dashboard's HTML, shared by its pages: escaping (every value from
the store goes through :func:`h`), times, state badges and links to a server's page."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any
from urllib.parse import quote

from packdist.core.timefmt import ago


def h(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def when(stamp: str | None, now: float) -> str:
    """``<time>`` with the ISO stamp as tooltip and "12s ago" as text."""
    if not stamp:
        return '<span class="muted">never</span>'
    return f'<time datetime="{h(stamp)}" title="{h(stamp)}">{h(ago(_epoch(stamp), now))}</time>'


def server_link(name: str) -> str:
    """A server's name, linked to its page (a child's server: shown, not linked)."""
    if "/" in name:
        return h(name)
    return f'<a href="/servers/{h(quote(name, safe=""))}">{h(name)}</a>'


def badge(word: str) -> str:
    cls = word.replace(" ", "-")
    return f'<span class="badge s-{h(cls)}">{h(word)}</span>'


def package_link(ref: str) -> str:
    """A package version's name, linked to its page across the fleet."""
    return f'<a class="pkg" href="/packages/{h(quote(ref, safe="@"))}">{h(ref)}</a>'
