"""Instruction and job states, with every allowed transition in one table.

The store enforces the table with guarded updates (``UPDATE … WHERE state IN (…)``); an
update that changes no row raises :class:`~packdist.errors.InvalidTransition`.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class InstructionState(StrEnum):
    PENDING = "pending"  # waiting for a despooler worker; never attempted, or reset by an operator
    SENDING = "sending"  # claimed by a worker holding a lease; the agent is installing
    INSTALLED = "installed"  # the agent holds the whole version, verified (terminal)
    RETRYING = "retrying"  # an attempt failed; the next one is due at next_attempt_at
    FAILED = "failed"  # gave up: attempt limit or deadline reached (terminal)
    CANCELLED = "cancelled"  # an operator cancelled it, or a later job superseded it (terminal)
    REMOVED = "removed"  # a removal instruction: the agent no longer holds the version (terminal)


S = InstructionState

#: event -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[InstructionState], InstructionState]] = {
    "claim": (frozenset({S.PENDING, S.RETRYING}), S.SENDING),
    "installed": (frozenset({S.SENDING}), S.INSTALLED),
    "removed": (frozenset({S.SENDING}), S.REMOVED),
    "retry": (frozenset({S.SENDING}), S.RETRYING),
    "fail": (frozenset({S.SENDING}), S.FAILED),
    "lease_expired": (frozenset({S.SENDING}), S.RETRYING),
    "cancel": (frozenset({S.PENDING, S.SENDING, S.RETRYING}), S.CANCELLED),
    "operator_retry": (frozenset({S.FAILED, S.CANCELLED}), S.PENDING),
    "wake": (frozenset({S.RETRYING}), S.RETRYING),
}

TERMINAL: frozenset[InstructionState] = frozenset({S.INSTALLED, S.REMOVED, S.FAILED, S.CANCELLED})

#: the terminal state that means "done" for each job action
DONE: dict[str, InstructionState] = {"install": S.INSTALLED, "remove": S.REMOVED}


def sources(event: str) -> frozenset[InstructionState]:
    return TRANSITIONS[event][0]


def target(event: str) -> InstructionState:
    return TRANSITIONS[event][1]


def can(event: str, state: InstructionState) -> bool:
    return state in TRANSITIONS[event][0]


class JobState(StrEnum):
    ACTIVE = "active"  # some instruction is not terminal yet
    SUCCEEDED = "succeeded"  # every target holds the package, verified (a removal job: none does)
    FAILED = "failed"  # every instruction is terminal and at least one failed
    CANCELLED = "cancelled"  # every instruction is terminal, none failed, some cancelled


def job_state(states: Iterable[InstructionState], action: str = "install") -> JobState:
    """Derive a job's state from its instructions' states.

    A job with no instruction is not a succeeded job: it cannot exist, and if it is ever
    seen it is reported as failed, never as success. A job succeeds only when every
    instruction reached the state its action requires (``installed`` for an install job,
    ``removed`` for a removal job).
    """
    states = list(states)
    if not states:
        return JobState.FAILED
    if any(s not in TERMINAL for s in states):
        return JobState.ACTIVE
    if all(s is DONE[action] for s in states):
        return JobState.SUCCEEDED
    if any(s is S.FAILED for s in states):
        return JobState.FAILED
    return JobState.CANCELLED
