"""How a job reads on a terminal: the table of ``job show`` and ``job wait`` (progress,
bytes, rates, last errors), and the one-line form of ``job wait`` without a terminal."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from packdist.cli.common import ago
from packdist.core.words import human_bytes
from packdist.site.job_docs import cancelled_why, job_counts
from packdist.states import DONE
from packdist.store.base import InstructionRecord, JobRecord

if TYPE_CHECKING:  # rich is loaded where a table is drawn: ``--wait`` in a pipe does without
    from rich.console import Group


class RateMeter:
    """Bytes per second of each server from successive samples of its
    ``bytes_sent``, over a sliding window: the site writes progress every ~2 s, so a rate
    from two neighbouring samples would jump between zero and twice the truth."""

    def __init__(self, window: float = 6.0) -> None:
        self.window = window
        self.samples: dict[str, deque[tuple[float, int]]] = {}

    def add(self, job: JobRecord, at: float) -> None:
        for i in job.instructions:
            key, value = i.server, _shown(i)
            q = self.samples.setdefault(key, deque())
            q.append((at, value))
            while len(q) > 2 and at - q[1][0] >= self.window:
                q.popleft()

    def rate(self, key: str) -> float | None:
        q = self.samples.get(key)
        if not q or len(q) < 2:
            return None
        (t0, b0), (t1, b1) = q[0], q[-1]
        if t1 - t0 < 1.0:
            return None
        return max(0, b1 - b0) / (t1 - t0)


def _shown(i: InstructionRecord) -> int:
    """Bytes to show as done: all of them once installed (verified), else what the server
    holds so far (found locally or received; not what crossed the wire, which may be
    compressed)."""
    if i.state.value == "installed":
        return i.bytes_total
    return min(i.bytes_done, i.bytes_total) if i.bytes_total else i.bytes_done


def _sources(sent: int, from_peers: int) -> str:
    return f"{human_bytes(max(0, sent - from_peers))} / {human_bytes(from_peers)}"


def _rate_text(rate: float | None) -> str:
    return f"{human_bytes(rate)}/s" if rate else "-"


def _job_table(
    job: JobRecord,
    now: float,
    meter: RateMeter | None = None,
    more: str = "",
    halted: str | None = None,
) -> Group:
    """The job as operators follow it: a title, one row per server and a total (progress,
    bytes, rate when ``meter`` is given, next attempt), then the last error of each server
    in words, on lines of their own so they are never cut at 80 columns. A job read in
    part (a page): its counts per state, the rows of that page, and ``more``. ``halted``:
    no site server runs (what to say): no next attempt is promised."""
    from rich.console import Group, RenderableType
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    removal = job.action == "remove"
    goal = DONE[job.action].value
    counts = job_counts(job)
    whole = len(job.instructions) == job.total
    title = Text(
        f"job {job.id}  {'remove ' if removal else ''}{job.package_ref}  [{job.state.value}]"
        f"  {counts[goal]:,}/{job.total:,} {goal}",
        style="bold",
    )
    table = Table(box=None, pad_edge=False)
    cols = ["server", "state", "tries"]
    cols += [] if removal else ["progress", "bytes"]  # a removal moves no bytes
    # what crossed the wire, from the site and from peers (compressed, deltas)
    # (in ``job show``; the live table of ``job wait`` shows rates instead, within 80 columns)
    wire = meter is None and not removal and any(i.bytes_sent for i in job.instructions)
    cols += ["from site / peers"] if wire else []
    cols += ["rate"] if meter is not None and not removal else []
    cols += ["next"]
    for col in cols:
        table.add_column(col, no_wrap=True, justify="right" if col == "tries" else "left")

    def progress(done: int, total: int) -> Table:
        grid = Table.grid(padding=(0, 0, 0, 1))
        grid.add_row(
            ProgressBar(total=max(total, 1), completed=done, width=10),
            f"{100 * done // total if total else 0:>3}%",
        )
        return grid

    def size(done: int, total: int) -> str:
        a, b = human_bytes(done), human_bytes(total)
        if a.split()[-1] == b.split()[-1]:  # "2.2/2.8 GiB"
            return f"{a.split()[0]}/{b}"
        return f"{a}/{b}"

    for i in job.instructions:
        done = _shown(i)
        nxt = ""
        if halted is not None and i.state.value in ("retrying", "pending"):
            nxt = "no site server"
        elif i.state.value == "retrying":
            nxt = "due now" if i.next_attempt_at <= now else ago(i.next_attempt_at, now)
        row: list[RenderableType] = [i.server, _styled(i.state.value), str(i.attempts)]
        if removal:
            table.add_row(*row, nxt)
            continue
        row += [progress(done, i.bytes_total), size(done, i.bytes_total)]
        if wire:
            row += [_sources(i.bytes_sent, i.bytes_from_peers)]
        if meter is not None:  # a rate only while bytes are moving
            row += [_rate_text(meter.rate(i.server) if i.state.value == "sending" else None)]
        row += [nxt]
        table.add_row(*row)
    if len(job.instructions) > 1 and not removal and whole:
        done = sum(_shown(i) for i in job.instructions)
        total = sum(i.bytes_total for i in job.instructions)
        row = ["[bold]total[/bold]", "", str(sum(i.attempts for i in job.instructions))]
        row += [progress(done, total), size(done, total)]
        if wire:
            row += [
                _sources(
                    sum(i.bytes_sent for i in job.instructions),
                    sum(i.bytes_from_peers for i in job.instructions),
                )
            ]
        if meter is not None:
            rates = [meter.rate(i.server) for i in job.instructions if i.state.value == "sending"]
            row += [_rate_text(sum(r for r in rates if r) or None)]
        row += [""]
        table.add_row(*row)
    parts: list[RenderableType] = [title]
    if halted is not None:
        parts.append(Text(halted, style="bold yellow"))
    if not whole:
        parts.append(Text("  ".join(f"{s} {n:,}" for s, n in counts.items() if n)))
    parts.append(table)
    if more:
        parts.append(Text(more, style="italic"))
    where = [i for i in job.instructions if i.phase and i.state.value == "sending"]
    if where:  # a server behind a child site: where its package is
        parts.append(Text("where", style="bold"))
        width = max(len(i.server) for i in where)
        for i in where:
            parts.append(Text(f"  {i.server:<{width}}  {i.phase}"))
    errors = [i for i in job.instructions if i.last_error or i.state.value == "cancelled"]
    if errors:
        parts.append(Text("last error", style="bold"))
        width = max(len(i.server) for i in errors)
        for i in errors:
            line = Text(f"  {i.server:<{width}}  ")
            if i.state.value == "cancelled":  # the error before the cancel is not the reason
                line.append(cancelled_why(i.cancel_cause), style="yellow")
            else:
                line.append(i.last_error or "", style="red" if i.state.value != goal else "")
            parts.append(line)
    return Group(*parts)


_STYLES = {
    "installed": "green",
    "removed": "green",
    "succeeded": "green",
    "failed": "red",
    "corrupt": "red",
    "retrying": "yellow",
    "sending": "cyan",
    "in progress": "cyan",
    "removing": "cyan",
    "pending": "cyan",
}


def _styled(word: str) -> str:
    from rich.markup import escape

    style = _STYLES.get(word)
    return f"[{style}]{escape(word)}[/{style}]" if style else escape(word)


def _plain_line(job: JobRecord) -> str:
    """``job J active: dp1=installed, dp2=retrying (why)``; a job read without its rows
    (a big one) gives its counts: ``job J active: installed 7,000, retrying 800``."""
    parts = []
    if not job.instructions and job.total:
        parts = [f"{s} {n:,}" for s, n in job_counts(job).items() if n]
    for i in job.instructions:
        extra = f" ({i.last_error})" if i.state.value == "retrying" and i.last_error else ""
        parts.append(f"{i.server}={i.state.value}{extra}")
    what = "removal " if job.action == "remove" else ""
    return f"{what}job {job.id} {job.state.value}: " + ", ".join(parts)
