"""The dashboard's HTML, rendered on the site from the documents of :mod:`packdist.site.views`.

Plain server-rendered pages: they work without JavaScript (a ``<noscript>`` refresh), and
``static/dashboard.js`` re-renders the live part from the JSON API every 1.5 s. Every value
from the store goes through :func:`h` (``html.escape``); nothing here ever sees a secret
(enrollment tokens and the operator password exist on the site only as hashes).
"""

from __future__ import annotations

import string
from typing import Any

from packdist.core.timefmt import ago
from packdist.core.words import human_bytes
from packdist.site.causes_block import causes_block
from packdist.site.html_bits import _epoch, badge, h, package_link, server_link, when
from packdist.site.job_docs import cancelled_why
from packdist.site.notices import notices_block
from packdist.site.timeline import events_block
from packdist.site.views import JOB_PAGE
from packdist.states import DONE

# re-exported: these lived here before html_bits.py and timeline.py
__all__ = ["badge", "events_block", "h", "server_link", "when"]

REFRESH_WITHOUT_JS = 10  # seconds


_PAGE = string.Template(
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<link rel="stylesheet" href="/static/dashboard.css">
$noscript
</head>
<body>
<header>
  <a class="brand" href="/">packdist <span class="site">$site</span></a>
  $nav
</header>
$body
<script src="/static/dashboard.js"></script>
</body>
</html>
"""
)


def page(title: str, site: str, body: str, logged_in: bool = True, refresh: bool = False) -> str:
    nav = ""
    if logged_in:
        nav = (
            '<form method="get" action="/search" class="search" role="search">'
            '<input type="search" name="q" placeholder="server, package or job" aria-label="Search">'
            "</form>"
            '<a href="/servers" class="nav">Servers</a>'
            '<a href="/rollouts" class="nav">Rollouts</a>'
            '<span id="conn" class="conn" role="status">live updates start in a moment</span>'
            '<form method="post" action="/logout" class="logout">'
            '<button type="submit">Log out</button></form>'
        )
    noscript = (
        f'<noscript><meta http-equiv="refresh" content="{REFRESH_WITHOUT_JS}"></noscript>'
        if refresh
        else ""
    )
    return _PAGE.substitute(title=h(title), site=h(site), nav=nav, body=body, noscript=noscript)


def live(src: str, content: str) -> str:
    """The part of a page the script replaces with fresh HTML from ``src``."""
    return f'<main id="live" data-src="{h(src)}">{content}</main>'


# --- login ----------------------------------------------------------------------------------


def login_page(site: str, next_path: str, error: str = "", configured: bool = True) -> str:
    if not configured:
        form = (
            '<p class="error">This site has no operator password yet. On the site host run'
            " <code>packdist site operator-password</code> and log in with the password it"
            " prints.</p>"
        )
    else:
        err = f'<p class="error" role="alert">{h(error)}</p>' if error else ""
        form = (
            f'{err}<form method="post" action="/login" class="login">'
            f'<input type="hidden" name="next" value="{h(next_path)}">'
            '<input type="text" name="username" value="operator" autocomplete="username"'
            " hidden readonly>"
            '<label for="password">Operator password</label>'
            '<input id="password" name="password" type="password" autocomplete="current-password"'
            " required autofocus>"
            '<button type="submit">Log in</button></form>'
            '<p class="muted">Your operator password (it names you) was printed once by'
            " <code>packdist operator add</code> (admin's: <code>packdist site init</code>);"
            " <code>packdist operator reset NAME</code> replaces it.</p>"
        )
    body = f'<main class="narrow"><h1>Log in to {h(site)}</h1>{form}</main>'
    return page(f"packdist {site}: log in", site, body, logged_in=False)


# --- sections ---------------------------------------------------------------------------------


def _summary(s: dict[str, int]) -> str:
    tiles = [
        ("active jobs", s["jobs_active"], "active" if s["jobs_active"] else ""),
        ("retrying", s["retrying"], "warn" if s["retrying"] else ""),
        ("failed or corrupt", s["failed"], "bad" if s["failed"] else ""),
        ("installed", s["installed"], ""),
        (
            "servers online",
            f"{s['servers_online']} / {s['servers']}",
            "bad" if s["servers_online"] < s["servers"] else "",
        ),
    ]
    inner = "".join(
        f'<div class="tile {cls}"><div class="n">{h(n)}</div><div class="l">{h(label)}</div></div>'
        for label, n, cls in tiles
    )
    return f'<section class="tiles" aria-label="summary">{inner}</section>'


def _matrix(doc: dict[str, Any]) -> str:
    servers = [s["name"] for s in doc["servers"]]
    if not doc["packages"] or not servers:
        missing = "no packages yet" if not doc["packages"] else "no servers yet"
        return f'<section><h2>Packages &times; servers</h2><p class="muted">{missing}</p></section>'
    head = "".join(f'<th scope="col">{server_link(s)}</th>' for s in servers)
    rows = []
    for ref in doc["packages"]:
        cells = []
        for s in servers:
            c = doc["matrix"][ref][s]
            word = c["word"]
            label = badge(word)
            if c.get("job"):
                label = f'<a href="/jobs/{h(c["job"])}">{label}</a>'
            shown = c["detail"] and word != "installed"
            why = f'<div class="why">{h(c["detail"])}</div>' if shown else ""
            cells.append(
                f'<td class="cell" data-server="{h(s)}" data-word="{h(word)}"'
                f' title="{h(c["detail"])}">{label}{why}</td>'
            )
        rows.append(
            f'<tr data-package="{h(ref)}"><th scope="row">{package_link(ref)}</th>'
            f"{''.join(cells)}</tr>"
        )
    return (
        f'<section><h2>Packages &times; servers</h2>{_tally(doc)}<div class="scroll"><table class="matrix">'
        f'<thead><tr><th scope="col">package</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _tally(doc: dict[str, Any]) -> str:
    """The whole matrix in counts, when the page shows only some of the servers."""
    total = doc.get("servers_total", len(doc["servers"]))
    if total <= len(doc["servers"]) or "tally" not in doc:
        return ""
    rows = []
    for ref in doc["packages"]:
        words = doc["tally"].get(ref, {})
        parts = " ".join(
            f'<span class="count" data-word="{h(w)}">{badge(w)} {n:,}</span>'
            for w, n in sorted(words.items(), key=lambda kv: -kv[1])
        )
        rows.append(
            f'<tr data-package="{h(ref)}"><th scope="row">{package_link(ref)}</th>'
            f"<td>{parts or '-'}</td></tr>"
        )
    return (
        f'<p class="muted">{len(doc["servers"]):,} of {total:,} servers shown: those that'
        " need attention first. Every server, in counts:</p>"
        f'<table class="tally"><tbody>{"".join(rows)}</tbody></table>'
    )


def job_block(job: dict[str, Any], now: float, link: bool = True, more: str = "") -> str:
    """A job: its title with counts, and the rows of the instructions the document holds
    (all, or a page: ``more`` then says what else there is)."""
    removal = job.get("action") == "remove"
    goal = DONE[job.get("action", "install")].value
    counts = job.get("counts") or {}
    total = job.get("targets", len(job["instructions"]))
    done = (
        counts.get(goal, 0) if counts else sum(1 for i in job["instructions"] if i["state"] == goal)
    )
    whole = len(job["instructions"]) == total  # bytes add up only over every instruction
    sent = sum(_shown_bytes(i) for i in job["instructions"])
    size = sum(i["bytes_total"] for i in job["instructions"])
    title = (
        f'<a href="/jobs/{h(job["id"])}">job {h(job["id"])}</a>' if link else f"job {h(job['id'])}"
    )
    rows = []
    for i in job["instructions"]:
        shown = _shown_bytes(i)
        nxt = ""
        if i["state"] == "retrying" and i["next_attempt_at"]:
            due = _epoch(i["next_attempt_at"]) or now
            nxt = "due now" if due <= now else f"next attempt {ago(due, now)}"
        err = (
            cancelled_why(i["cancel_cause"]) if i["state"] == "cancelled" else i["last_error"] or ""
        )
        if removal:  # no bytes travel: the bar says done or not
            bar = (
                f'<td class="bar">{"done" if i["state"] == goal else "-"}</td>'
                '<td class="num">-</td><td class="num">-</td>'
            )
        else:
            bar = (
                f'<td class="bar"><progress max="{max(i["bytes_total"], 1)}" value="{shown}">'
                f"{_pct(shown, i['bytes_total'])}</progress> {_pct(shown, i['bytes_total'])}</td>"
                f'<td class="num">{h(human_bytes(shown))} /'
                f" {h(human_bytes(i['bytes_total']))}</td>"
                f'<td class="num wire">{h(_wire(i))}</td>'
            )
        rows.append(
            f'<tr data-server="{h(i["server"])}" data-state="{h(i["state"])}">'
            f'<th scope="row">{server_link(i["server"])}</th>'
            f'<td class="state">{badge(i["state"])}</td>'
            f"{bar}"
            f'<td class="num">{h(i["attempts"])}</td>'
            f'<td class="next">{h(nxt)}</td>'
            f'<td class="error">{h(err)}</td></tr>'
        )
    what = f"remove {job['package']}" if removal else job["package"]
    moved = "" if removal or not whole else f" · {h(human_bytes(sent))} of {h(human_bytes(size))}"
    shown = len(job["instructions"])
    if not more and shown < total:
        more = f"{total - shown:,} more: see the job's page"
        if link:
            more = f'<a href="/jobs/{h(job["id"])}">{h(f"{total - shown:,} more")}</a>'
        else:
            more = h(more)
    tail = f'<p class="more muted">{more}</p>' if more else ""
    return (
        f'<article class="job" id="job-{h(job["id"])}" data-state="{h(job["state"])}"'
        f' data-action="{h(job.get("action", "install"))}">'
        f'<h3>{title} <span class="pkg">{h(what)}</span> {badge(job["state"])}'
        f' <span class="muted">{done:,}/{total:,} {goal}{moved}'
        f" · created {when(job['created_at'], now)}</span></h3>"
        '<table class="instructions"><thead><tr><th scope="col">server</th>'
        '<th scope="col">state</th><th scope="col">progress</th><th scope="col">bytes</th>'
        '<th scope="col" title="bytes received on the wire from the site / from peers">'
        "from site / peers</th>"
        '<th scope="col">attempts</th><th scope="col">next</th><th scope="col">last error</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>{_counts(counts)}{tail}</article>"
    )


def _counts(counts: dict[str, int]) -> str:
    """Per state, how many of the job's instructions are in it (the states it has)."""
    parts = [
        f'<span class="count" data-state="{h(state)}">{badge(state)} {n:,}</span>'
        for state, n in counts.items()
        if n
    ]
    return f'<p class="counts">{" ".join(parts)}</p>' if parts else ""


def _wire(i: dict[str, Any]) -> str:
    """What crossed the wire to the server: from the site / from peers."""
    return f"{human_bytes(i['bytes_from_site'])} / {human_bytes(i['bytes_from_peers'])}"


def _shown_bytes(i: dict[str, Any]) -> int:
    return min(int(i["bytes_done"]), int(i["bytes_total"]))  # all of it once installed


def _pct(done: int, total: int) -> str:
    return f"{100 * done // total}%" if total else "0%"


def _jobs(jobs: list[dict[str, Any]], now: float) -> str:
    if not jobs:
        return '<section><h2>Jobs</h2><p class="muted">no jobs yet</p></section>'
    return "<section><h2>Jobs</h2>" + "".join(job_block(j, now) for j in jobs) + "</section>"


def child_sites_block(children: list[dict[str, Any]]) -> str:
    """The child sites, when there are any: state, last report, servers online, link."""
    if not children:
        return ""
    rows = []
    for c in children:
        link = human_bytes(int(c["bandwidth"])) + "/s" if c["bandwidth"] else "unlimited"
        link += f", {c['waiting']}" if c["waiting"] else ""
        rows.append(
            f'<tr data-child="{h(c["name"])}"><th scope="row">{h(c["name"])}</th>'
            f"<td>{badge(c['state'] if c['state'] != 'never reported' else 'offline')}</td>"
            f'<td title="{h(c["last_seen"] or "never")}">{h(c["last_seen_ago"])}</td>'
            f'<td class="num">{c["servers_online"]} of {c["servers_total"]}</td><td>{h(link)}</td>'
            f'<td class="muted">{h(c["url"])}</td></tr>'
        )
    return (
        '<section><h2>Child sites</h2><div class="scroll"><table class="servers"><thead><tr>'
        '<th scope="col">child site</th><th scope="col">state</th>'
        '<th scope="col">last report</th><th scope="col">servers online</th>'
        f'<th scope="col">link</th><th scope="col">url</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _servers(servers: list[dict[str, Any]]) -> str:
    if not servers:
        return '<section><h2>Servers</h2><p class="muted">no servers yet</p></section>'
    rows = []
    for s in servers:
        disk = human_bytes(s["disk_free"]) if s["disk_free"] is not None else "-"
        pkgs = ", ".join(s["installed"]) or "none"
        rows.append(
            f'<tr data-server="{h(s["name"])}"><th scope="row">{server_link(s["name"])}</th>'
            f"<td>{badge('online' if s['online'] else 'offline')}</td>"
            f'<td title="{h(s["last_seen"] or "never")}">{h(s["last_seen_ago"])}</td>'
            f'<td class="num">{h(disk)}</td><td>{h(pkgs)}</td>'
            f"<td>{h(', '.join(s['groups']))}</td>"
            f"<td>{h(', '.join(f'{k}={v}' for k, v in s.get('labels', {}).items()))}</td>"
            f'<td class="muted">{h(s["url"])}</td></tr>'
        )
    return (
        '<section><h2>Servers</h2><div class="scroll"><table class="servers"><thead><tr>'
        '<th scope="col">server</th><th scope="col">agent</th>'
        '<th scope="col">last heartbeat</th><th scope="col">free disk</th>'
        '<th scope="col">installed packages</th><th scope="col">groups</th>'
        '<th scope="col">labels</th>'
        f'<th scope="col">url</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        "</section>"
    )


# --- pages ------------------------------------------------------------------------------------


def overview_content(doc: dict[str, Any], now: float) -> str:
    return (
        _summary(doc["summary"])
        + notices_block(doc.get("refused_agents", []))
        + _matrix(doc)
        + _jobs(doc["jobs"], now)
        + _servers(doc["servers"])
        + child_sites_block(doc.get("child_sites", []))
        + events_block(doc["events"], now)
    )


def job_content(doc: dict[str, Any], now: float) -> str:
    more = _pager(doc["job"], doc.get("page") or {})
    return (
        causes_block(doc["job"]["id"], doc.get("causes") or [], doc.get("troubled", 0))
        + job_block(doc["job"], now, link=False, more=more)
        + events_block(doc["events"], now, "Timeline")
    )


def _pager(job: dict[str, Any], page: dict[str, Any]) -> str:
    """Links to the other pages of a job's instructions, and to those in one state."""
    matching = int(page.get("matching", len(job["instructions"])))
    offset, limit, state = (
        int(page.get("offset", 0)),
        int(page.get("limit") or 1),
        page.get("state"),
    )
    shown = len(job["instructions"])
    base = f"/jobs/{job['id']}"

    def link(text: str, new_state: str | None, new_offset: int) -> str:
        query = [f"state={new_state}"] if new_state else []
        query += [f"offset={new_offset}"] if new_offset else []
        query += [f"limit={limit}"] if limit != JOB_PAGE else []  # the pages stay aligned
        href = base + ("?" + "&".join(query) if query else "")
        return f'<a href="{h(href)}">{h(text)}</a>'

    parts = []
    if matching > shown or offset:
        last = offset + shown
        parts.append(f"{offset + 1 if shown else offset:,}-{last:,} of {matching:,}")
        if offset > 0:
            parts.append(link("previous", state, max(0, offset - limit)))
        if last < matching:
            parts.append(link("next", state, last))
    filters = [link(f"{s} ({n:,})", s, 0) for s, n in (job.get("counts") or {}).items() if n]
    if state:
        filters.insert(0, link("all", None, 0))
    if len(filters) > 1 or state:
        parts.append("show: " + " · ".join(filters))
    return " · ".join(parts)


def not_found_page_body(what: str) -> str:
    return (
        f'<main class="narrow"><h1>Not found</h1><p>{h(what)}</p><p><a href="/">back</a></p></main>'
    )


def not_found_page(site: str, what: str) -> str:
    return page("packdist: not found", site, not_found_page_body(what))
