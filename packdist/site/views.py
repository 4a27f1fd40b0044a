"""What operators see, as plain data: the same documents feed the dashboard, its JSON API and
the CLI (``job show --json``, ``status --json``, ``events --json``).

Each view is a function of a :class:`~packdist.store.base.Store` and the current time, run on
the store's thread; nothing here renders or talks HTTP.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from packdist.core.timefmt import ago, iso
from packdist.errors import ErrorKind
from packdist.site.cadence import SILENT_AFTER, offline_after_for
from packdist.site.causes import causes_json, job_causes
from packdist.site.job_docs import cancelled_why, job_counts, job_json
from packdist.site.liveness import FLUSH_EVERY
from packdist.states import InstructionState
from packdist.store.base import EventRecord, JobRecord, ServerRecord, StatusCell, Store

S = InstructionState
ONLINE_AFTER = SILENT_AFTER  # at least: a server heard from within this long is online
RECENT_JOBS = 20
RECENT_EVENTS = 60
OVERVIEW_SERVERS = 100  # servers (and their matrix cells) on the front page, trouble first
OVERVIEW_JOB_ROWS = 20  # instructions shown per job on the front page, trouble first
JOB_PAGE = 200  # instructions per page of a job's own page
#: the order a job's instructions are previewed in: what needs an operator first
ATTENTION_ORDER = (S.FAILED, S.RETRYING, S.SENDING, S.PENDING, S.CANCELLED, S.INSTALLED, S.REMOVED)

#: how each event kind reads on a timeline
EVENT_TITLES = {
    "created": "job created",
    "attempt": "attempt",
    "failure": "failure, retry scheduled",
    "installed": "installed",
    "removed": "removed",
    "failed": "failed for good",
    "cancelled": "cancelled",
    "retry": "operator retry",
    "recovered": "recovered",
    "server": "server",
    "package": "package",
    "corrupt": "corrupt, repair queued",
    "validated": "validated",
}


def is_corruption(error_kind: str | None) -> bool:
    """True when the last failure was content that did not match its digest or signature
    (read from the failure's kind, never guessed from its words)."""
    return error_kind == ErrorKind.INTEGRITY.value


def online_after(servers: int) -> float:
    """Seconds within which a server must have been heard from to show as online, in a
    fleet of ``servers``: the silence after which the site counts a server offline at the
    heartbeat interval it gives such a fleet, plus the batched write of quiet heartbeats
    (at 10,000 servers a healthy agent heartbeats every 10 s: a fixed 10 s showed it
    offline half the time). At least ONLINE_AFTER."""
    return max(ONLINE_AFTER, offline_after_for(servers) + FLUSH_EVERY)


def online(server: ServerRecord, now: float, after: float = ONLINE_AFTER) -> bool:
    return server.last_seen is not None and now - server.last_seen < after


def cell_view(cell: StatusCell | None, now: float, halted: bool = False) -> dict[str, Any]:
    """``{"word", "detail", "state", "job", ...}`` of one matrix cell (None: never sent);
    ``halted``: no site server runs, so no worker comes and no attempt is due."""
    if cell is None:
        return {"word": "-", "detail": "", "state": None, "job": None}
    state = cell.state
    base = {
        "state": state.value if state else None,
        "job": cell.job_id,
        "attempts": cell.attempts,
        "last_error": cell.last_error,
        "bytes_sent": cell.bytes_sent,
        "bytes_total": cell.bytes_total,
    }
    if cell.action == "remove":
        return _removal_view(cell, base, now)
    if cell.corrupt is not None:  # validation found the copy damaged; a repair mends it
        repair = f"; repair {state.value}" if state is not None and state is not S.INSTALLED else ""
        return {**base, "word": "corrupt", "detail": f"{cell.corrupt}{repair}"}
    if cell.installed:
        return {**base, "word": "installed", "detail": "verified"}
    earlier = f"; last error: {cell.last_error}" if cell.last_error else ""
    if state is S.PENDING:
        waits = "waiting for a site server to run" if halted else "waiting for a worker"
        return {**base, "word": "in progress", "detail": f"{waits}{earlier}"}
    if state is S.SENDING:
        pct = 100 * cell.bytes_sent // cell.bytes_total if cell.bytes_total else 0
        detail = f"sending, {pct}%, attempt {cell.attempts}{earlier}"
        return {**base, "word": "in progress", "detail": detail}
    if state is S.RETRYING:
        when = "no attempt until a site server runs" if halted else _due(cell.next_attempt_at, now)
        word = "corrupt" if is_corruption(cell.error_kind) else "retrying"
        detail = "; ".join(x for x in (cell.last_error or "", when) if x)
        return {**base, "word": word, "detail": detail}
    if state is S.FAILED:
        word = "corrupt" if is_corruption(cell.error_kind) else "failed"
        return {**base, "word": word, "detail": cell.last_error or ""}
    if state is S.CANCELLED:
        return {**base, "word": "cancelled", "detail": cancelled_why(cell.cancel_cause)}
    return {**base, "word": "installed", "detail": "verified"}  # S.INSTALLED, since removed


def _due(at: float | None, now: float) -> str:
    """When a retrying instruction's next attempt comes, in words ("" if unknown)."""
    if at is None:
        return ""
    return "retry due now" if at <= now else f"next attempt {ago(at, now)}"


def _removal_view(cell: StatusCell, base: dict[str, Any], now: float) -> dict[str, Any]:
    """A cell whose newest job is a removal: ``removing`` while it is under way, ``-`` once
    the server no longer holds the version, the copy's own word if the removal ended
    otherwise (failed, cancelled)."""
    state = cell.state
    if state is S.REMOVED or (state is S.CANCELLED and not cell.installed):
        return {**base, "word": "-", "detail": "removed" if state is S.REMOVED else ""}
    if state in (S.PENDING, S.SENDING, S.RETRYING):
        when = _due(cell.next_attempt_at, now) if state is S.RETRYING else ""
        detail = "; ".join(x for x in (f"removal {state.value}", cell.last_error or "", when) if x)
        return {**base, "word": "removing", "detail": detail}
    if state is S.FAILED:
        return {**base, "word": "failed", "detail": f"removal failed: {cell.last_error or ''}"}
    # a cancelled removal: the copy stays, and reads as it would without the removal
    return cell_view(replace(cell, action="install"), now)


def event_json(e: EventRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "time": e.at,
        "kind": e.kind,
        "job": e.job_id,
        "server": e.server,
        "message": e.message,
        "by": e.actor,  # the operator whose action it records; null: the site's own
    }


def server_json(
    s: ServerRecord, now: float, installed: list[str], after: float = ONLINE_AFTER
) -> dict[str, Any]:
    return {
        "name": s.name,
        "url": s.url,
        "groups": list(s.groups),
        "labels": dict(s.labels),
        "online": online(s, now, after),
        "last_seen": iso(s.last_seen),
        "last_seen_ago": ago(s.last_seen, now),
        "disk_free": s.disk_free,
        "installed": installed,
    }


def status(
    store: Store,
    now: float,
    only: list[str] | None = None,
    read: list[StatusCell] | None = None,
    after: float | None = None,
    halted: bool = False,
) -> dict[str, Any]:
    """The package x server matrix with a word and a reason per cell: of every server, or
    of the servers named in ``only`` (a page); from the cells ``read`` if given. ``after``:
    the :func:`online_after` of the fleet (worked out here when every server is read).
    ``halted``: no site server runs (no attempt is promised)."""
    if only is None:
        servers = store.list_servers()
        after = online_after(len(servers)) if after is None else after
    else:
        by_name = {s.name: s for s in store.servers_named(only)}
        servers = [by_name[n] for n in only if n in by_name]  # in the order asked
    packages = [p.ref for p in store.list_packages()]
    if read is None:
        read = store.status_cells(only)
    cells = {(c.package_ref, c.server): c for c in read}
    matrix = {
        p: {s.name: cell_view(cells.get((p, s.name)), now, halted) for s in servers}
        for p in packages
    }
    installed: dict[str, list[str]] = {s.name: [] for s in servers}
    for (ref, server), c in sorted(cells.items()):
        if c.installed and server in installed:
            installed[server].append(ref)
    return {
        "servers": [
            server_json(s, now, installed[s.name], ONLINE_AFTER if after is None else after)
            for s in servers
        ],
        "packages": packages,
        "matrix": matrix,
    }


def tally(store: Store, now: float) -> dict[str, dict[str, int]]:
    """package ref -> word -> how many live servers' cells read so: the whole matrix in
    counts, from one row per (package, what decides a word) of the store's summaries."""
    refs = store.package_refs()
    words: dict[str, dict[str, int]] = {}
    for r in store.matrix_tally():
        ref = refs.get(r["package_id"], r["package_id"][:12])
        state = S(r["state"]) if r["state"] is not None else None
        n, held, corrupt = int(r["n"]), int(r["held"] or 0), int(r["corrupt"] or 0)
        # the cells of a row differ only in whether (and how) the server holds the copy
        for count, is_held, is_corrupt in (
            (n - held, False, False),
            (held - corrupt, True, False),
            (corrupt, True, True),
        ):
            if count <= 0:
                continue
            cell = StatusCell(
                package_ref=ref,
                package_id=r["package_id"],
                server="",
                installed=is_held,
                state=state,
                job_id=None,
                attempts=0,
                last_error=None,
                next_attempt_at=None,
                bytes_sent=0,
                bytes_total=0,
                updated_at=None,
                corrupt="corrupt" if is_corrupt else None,
                action=r["action"],
                error_kind=r["error_kind"],
            )
            word = cell_view(cell, now)["word"]
            per = words.setdefault(ref, {})
            per[word] = per.get(word, 0) + count
    return words


def summary(
    jobs: list[JobRecord], words: dict[str, dict[str, int]], servers: int, servers_online: int
) -> dict[str, int]:
    def total(word: str) -> int:
        return sum(per.get(word, 0) for per in words.values())

    return {
        "jobs_active": sum(1 for j in jobs if j.state.value == "active"),
        "retrying": total("retrying"),
        "failed": total("failed") + total("corrupt"),
        "installed": total("installed"),
        "servers": servers,
        "servers_online": servers_online,
    }


def overview(store: Store, now: float, servers_shown: int = OVERVIEW_SERVERS) -> dict[str, Any]:
    """Everything the dashboard's front page shows, in one store call: the matrix in counts
    per package, one page of servers (trouble first) with their cells, the newest jobs with
    their counts and a few instructions each (trouble first), the newest events. What it
    reads grows with packages and the pages, not with the fleet's history."""
    from packdist.service.fleet import refusals_shown  # (the dashboard's: not the CLI's)

    after = online_after(store.server_counts(now)[0])
    online_since = now - after
    total, up = store.server_counts(online_since)
    page = store.servers_attention_first(online_since, servers_shown)
    st = status(store, now, page, after=after)
    words = tally(store, now)
    jobs = store.list_jobs(RECENT_JOBS)
    return {
        "site": store.site_name(),
        "generated_at": iso(now),
        "summary": summary(jobs, words, total, up),
        **st,
        "tally": {ref: words.get(ref, {}) for ref in st["packages"]},
        "servers_total": total,
        "jobs": [job_json(preview(store, j)) for j in jobs],
        "events": [event_json(e) for e in store.recent_events(RECENT_EVENTS)],
        "child_sites": child_sites(store, now, servers=False),
        # agents refused lately for a wrong token, in words (a line each)
        "refused_agents": list(refusals_shown(store, now).values()),
    }


def child_sites(store: Store, now: float, servers: bool = True) -> list[dict[str, Any]]:
    """The child sites, each with its state, link and servers (times as ISO stamps);
    without ``servers``, only how many are online of how many (the dashboard's overview,
    which must not grow with the fleets behind its children)."""
    from packdist.service.hierarchy import HierarchyUseCases  # (the CLI's status: --json only)

    children = HierarchyUseCases(store).child_sites(now)
    refs = store.package_refs() if children and servers else {}
    docs = []
    for c in children:
        doc = c.to_json(refs)
        doc["servers_online"] = sum(1 for s in c.servers if s.online)
        doc["servers_total"] = len(c.servers)
        if not servers:
            doc["servers"] = []
        doc["waiting"] = c.schedule.closed_words(now)
        doc["last_seen_ago"] = ago(c.last_seen, now)
        doc["last_seen"], doc["created_at"] = iso(c.last_seen), iso(c.created_at)
        for server in doc["servers"]:
            server["last_seen"] = iso(server["last_seen"])
        docs.append(doc)
    return docs


def preview(store: Store, job: JobRecord, rows: int = OVERVIEW_JOB_ROWS) -> JobRecord:
    """The job with a few of its instructions, those that need an operator first."""
    found = store.job_preview(job.id, ATTENTION_ORDER, rows, job.counts)
    return replace(job, instructions=tuple(found))


def job_page(
    store: Store,
    job_id: str,
    now: float,
    state: InstructionState | None = None,
    offset: int = 0,
    limit: int = JOB_PAGE,
) -> dict[str, Any]:
    """One job, one page of its instructions (in ``state`` if given) and its timeline."""
    job = store.get_job(job_id, None if state is None else [state], limit, offset)
    counts = job_counts(job)
    causes, troubled = job_causes(store, job_id)
    return {
        "site": store.site_name(),
        "generated_at": iso(now),
        "job": job_json(job),
        "page": {
            "state": state.value if state is not None else None,
            "offset": offset,
            "limit": limit,
            "matching": counts[state.value] if state is not None else job.total,
        },
        "events": [event_json(e) for e in store.recent_events(1000, job_id)],
        "causes": causes_json(causes),
        "troubled": troubled,
    }
