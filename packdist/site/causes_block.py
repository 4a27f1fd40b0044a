"""The job page's "causes" section: its trouble grouped by cause, the largest first, each
with how many servers, their state, the cause they share and one server's whole words; a
click shows the servers in that state."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from packdist.site.html_bits import badge, h, server_link


def causes_block(job_id: str, causes: list[dict[str, Any]], troubled: int) -> str:
    if not causes:
        return ""
    rows = []
    for c in causes:
        link = f"/jobs/{quote(job_id, safe='')}?state={quote(c['state'])}"
        n = c["servers"]
        kind = f' <span class="muted">({h(c["kind"])})</span>' if c["kind"] else ""
        rows.append(
            f'<tr data-state="{h(c["state"])}"><td class="num"><a href="{h(link)}">'
            f"{n:,} server{'s' if n != 1 else ''}</a></td><td>{badge(c['state'])}</td>"
            f'<td class="why">{h(c["cause"])}{kind}</td>'
            f'<td class="muted">e.g. {server_link(c["example"]["server"])}:'
            f" {h(c['example']['error'])}</td></tr>"
        )
    shown = sum(c["servers"] for c in causes)
    rest = troubled - shown
    more = f'<p class="muted">and {rest:,} more in smaller groups</p>' if rest > 0 else ""
    return (
        f'<section><h2>Causes</h2><table class="causes"><tbody>{"".join(rows)}</tbody></table>'
        f"{more}</section>"
    )
