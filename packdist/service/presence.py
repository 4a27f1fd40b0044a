"""Whether a site server runs: each ``site serve`` worker says so every ``SEEN_EVERY``
seconds with its batched heartbeat writes (no polling of its own), and the commands run in
the site's home (``distribute``, ``job show``, ``job wait``, ``status``) read it, so that
with none running they say so rather than promise an attempt nothing will make."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packdist.core.timefmt import iso
from packdist.store.core import Store

SEEN_EVERY = 10.0  # seconds between two "still running" writes of a site worker
#: a worker not heard from for this long is taken for gone (killed, its machine down)
RUNNING_WITHIN = 3 * SEEN_EVERY + 5.0
START = "start `packdist site serve`"


@dataclass(frozen=True)
class SitePresence:
    running: bool
    last_seen: float | None  # when a site worker last said it runs (None: never)
    message: str | None  # what to tell the user when none runs

    def json(self) -> dict[str, Any]:
        return {"running": self.running, "last_seen": iso(self.last_seen), "message": self.message}


def site_presence(store: Store, now: float) -> SitePresence:
    """Whether a site server runs on this site's store, and what to say if none does."""
    seen = store.site_workers_seen(now - RUNNING_WITHIN)
    if seen.running:
        return SitePresence(True, seen.last_seen, None)
    if seen.last_seen is None:
        return SitePresence(False, None, f"no site server has run yet: {START}")
    gone = _duration(max(0.0, now - seen.last_seen))
    return SitePresence(False, seen.last_seen, f"no site server has been seen for {gone}: {START}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
