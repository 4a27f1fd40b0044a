"""A job's trouble grouped by cause, for its dashboard page: "412 servers: connection refused
by <server>", not 412 lines that differ only in an address.

The words of a failure name the server they happened at (its URL, its address, its name),
so two servers failing the same way never have the same words. Here those parts are set
aside to find the cause they share; the kind (``error_kind``, stored as data) and the state
come first, so two causes of different kinds are never merged, whatever their words. One
example keeps the whole words of one server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from packdist.states import InstructionState
from packdist.store.base import Store

S = InstructionState
TROUBLED = frozenset({S.RETRYING, S.FAILED, S.CANCELLED})
MOST_READ = 20_000  # troubled instructions read for the grouping (a job page's bound)
SHOWN = 12  # causes shown, the largest first

_URL = re.compile(r"\bhttps?://[^\s,;)]+")
_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\[[0-9a-f:]+\](?::\d+)?", re.I)
_SECONDS = re.compile(r"\b\d+(?:\.\d+)?s\b")


@dataclass(frozen=True)
class Cause:
    state: str
    kind: str | None
    words: str  # what the servers share, their own parts set aside
    servers: int
    example_server: str
    example: str  # one server's whole words


def shared_words(server: str, words: str) -> str:
    """``words`` with what names its server set aside."""
    text = _URL.sub("<server>", words)
    text = _ADDRESS.sub("<address>", text)
    text = _SECONDS.sub("Ns", text)
    return _without_name(text, server) if server and server in text else text


def _without_name(text: str, name: str) -> str:
    """``text`` with ``name`` set aside where it stands as a word of its own (not inside
    another server's name, dp3 in dp30). Plain string search: this runs for every troubled
    instruction of a job, and a pattern compiled per server costs 40 µs each."""
    out, start = [], 0
    while (at := text.find(name, start)) >= 0:
        end = at + len(name)
        before = text[at - 1] if at else " "
        after = text[end] if end < len(text) else " "
        if not (_nameish(before) or _nameish(after)):
            out.append(text[start:at] + "<server>")
        else:
            out.append(text[start:end])
        start = end
    out.append(text[start:])
    return "".join(out)


def _nameish(c: str) -> bool:
    return c.isalnum() or c in "_.-"


def job_causes(store: Store, job_id: str) -> tuple[list[Cause], int]:
    """The largest causes of the job's retrying, failed and cancelled instructions, and
    how many such instructions there are in all."""
    rows = store.job_instructions_page(job_id, TROUBLED, limit=MOST_READ)
    groups: dict[tuple[str, str | None, str], list[Any]] = {}
    for r in rows:
        if r["state"] == S.CANCELLED:  # its cause, not the failure before an operator's cancel
            words = r["cancel_cause"] or "cancelled"
        else:
            words = r["last_error"] or "no error recorded"
        # a cancel keeps the kind of the failure before it: not its kind
        kind = None if r["state"] == S.CANCELLED else r["error_kind"]
        key = (str(r["state"]), kind, shared_words(str(r["server"]), words))
        entry = groups.setdefault(key, [0, str(r["server"]), words])
        entry[0] += 1
    causes = [
        Cause(state, kind, words, n, server, example)
        for (state, kind, words), (n, server, example) in groups.items()
    ]
    causes.sort(key=lambda c: (-c.servers, c.state, c.words))
    # the troubled that were read: "and N more in smaller groups" counts only what it saw
    return causes[:SHOWN], len(rows)


def causes_json(causes: list[Cause]) -> list[dict[str, Any]]:
    return [
        {
            "state": c.state,
            "kind": c.kind,
            "cause": c.words,
            "servers": c.servers,
            "example": {"server": c.example_server, "error": c.example},
        }
        for c in causes
    ]
