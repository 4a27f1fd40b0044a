"""The timeline as the dashboard shows it: the events of a job, a server or the site, with
the repeated attempts of a server that keeps failing the same way folded into the first.

A server unplugged for an hour leaves two events per retry ("attempt 7 to dp3", "connect
timeout to …; retry in 54s"): shown as they are, they bury everything else. Here a run of
failures of one server in one job with the same cause is one line, its newest failure
"connect timeout to …; retry in 54s — 6 earlier attempts failed the same way, the first 12
min ago", and the attempts inside the run are not shown; the first different event of that
server (installed, another cause) ends the run. The JSON of ``/api/events`` and ``packdist events`` keep every event.
"""

from __future__ import annotations

from typing import Any

from packdist.core.timefmt import ago
from packdist.site.html_bits import h, server_link, when
from packdist.site.views import EVENT_TITLES

Event = dict[str, Any]


def cause_of(message: str) -> str:
    """A failure's cause: its words without the retry plan ("; retry in 4.0s")."""
    head, sep, tail = message.rpartition("; ")
    return head if sep and tail.startswith(("retry", "server came back")) else message


def collapse(events: list[Event]) -> list[Event]:
    """``events`` (oldest first) with each run of same-cause failures folded into its first
    failure, shown as the newest failure of the run with ``repeated`` (how many came
    before it in the run), ``first_at`` and ``first_time``."""
    shown: list[Event] = []
    runs: dict[tuple[str, str], tuple[int, str]] = {}  # (job, server) -> (index, cause)
    held: dict[tuple[str, str], Event] = {}  # an attempt that may belong to the run
    for e in events:
        if not e.get("server") or not e.get("job"):
            shown.append(e)
            continue
        key = (e["job"], e["server"])
        if e["kind"] == "attempt" and key in runs:
            if key in held:
                shown.append(held.pop(key))
            held[key] = e
            continue
        run = runs.get(key)
        if e["kind"] == "failure" and run is not None and run[1] == cause_of(e["message"]):
            held.pop(key, None)
            before = shown[run[0]]
            # the run shows as its newest failure (its place, its retry plan), counting
            # the earlier ones
            shown[run[0]] = {
                **e,
                "repeated": before.get("repeated", 0) + 1,
                "first_at": before.get("first_at", before["at"]),
                "first_time": before.get("first_time", before["time"]),
            }
            continue
        if key in held:
            shown.append(held.pop(key))
        if e["kind"] == "failure":
            runs[key] = (len(shown), cause_of(e["message"]))
        else:
            runs.pop(key, None)
        shown.append(e)
    shown.extend(held.values())  # attempts under way at the end: shown
    shown.sort(key=lambda e: e["id"])
    return shown


def events_block(events: list[Event], now: float, title: str = "Events") -> str:
    if not events:
        return f'<section><h2>{h(title)}</h2><p class="muted">nothing yet</p></section>'
    items = []
    for e in reversed(collapse(events)):  # newest first
        job = f'<a href="/jobs/{h(e["job"])}">job {h(e["job"])}</a>' if e["job"] else ""
        server = f'<span class="server">{server_link(e["server"])}</span>' if e["server"] else ""
        kind = EVENT_TITLES.get(e["kind"], e["kind"])
        more = ""
        if e.get("repeated"):
            n = e["repeated"]
            more = (
                f' <span class="repeated">— {n} earlier attempt{"s" if n != 1 else ""} failed'
                f" the same way, the first {h(ago(e['first_time'], now))}</span>"
            )
        items.append(
            f'<li class="event k-{h(e["kind"])}" data-kind="{h(e["kind"])}">'
            f'{when(e["at"], now)} <span class="kind">{h(kind)}</span> {job} {server}'
            f' <span class="msg">{h(e["message"])}</span>{more}</li>'
        )
    return f'<section><h2>{h(title)}</h2><ol class="events">{"".join(items)}</ol></section>'
