"""A job as plain data: the document of ``job show --json`` (CONTRACT.md), its counts per
state, and why a cancelled instruction ended. The command line's job commands print these
without the rest of the views (``site/views.py``, which re-exports them)."""

from __future__ import annotations

from typing import Any

from packdist.core.timefmt import iso
from packdist.states import InstructionState
from packdist.store.records import JobRecord

S = InstructionState


def cancelled_why(cause: str | None) -> str:
    """Why a cancelled instruction ended, in words: its stored cause (an operator, a newer
    job, its server removed, a parent's cancel), not its last error (an operator's cancel
    keeps the failure before it there)."""
    return cause or "cancelled"


def instruction_json(i: Any, now: float | None = None) -> dict[str, Any]:
    return {
        "server": i.server,
        "state": i.state.value,
        "attempts": i.attempts,
        "last_error": i.last_error,
        "error_kind": i.error_kind,
        "cancel_cause": i.cancel_cause,
        "next_attempt_at": iso(i.next_attempt_at) if i.state is S.RETRYING else None,
        "bytes_sent": i.bytes_sent,
        "bytes_from_site": max(0, i.bytes_sent - i.bytes_from_peers),
        "bytes_from_peers": i.bytes_from_peers,
        "bytes_done": i.bytes_total if i.state is S.INSTALLED else i.bytes_done,
        "bytes_total": i.bytes_total,
        "phase": i.phase if i.state is S.SENDING else None,
        "updated_at": iso(i.updated_at),
        "finished_at": iso(i.finished_at),
    }


def job_counts(job: JobRecord) -> dict[str, int]:
    """state -> how many of the job's instructions are in it (every state present)."""
    if job.counts:
        return {s.value: job.counts.get(s.value, 0) for s in S}
    counts = {s.value: 0 for s in S}
    for i in job.instructions:
        counts[i.state.value] += 1
    return counts


def job_json(job: JobRecord, instructions: bool = True) -> dict[str, Any]:
    """The document of ``job show --json`` (CONTRACT.md): the job, its counts per state, and
    its instructions (those read: every one unless paged; none if not ``instructions``)."""
    doc: dict[str, Any] = {
        "id": job.id,
        "action": job.action,
        "package": job.package_ref,
        "package_id": job.package_id,
        "state": job.state.value,
        "created_at": iso(job.created_at),
        "max_attempts": job.max_attempts,
        "deadline": job.deadline,
        "targets": job.total,
        "counts": job_counts(job),
    }
    if instructions:
        doc["instructions"] = [instruction_json(i) for i in job.instructions]
    return doc
