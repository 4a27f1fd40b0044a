"""Instruction and job states, with every allowed transition in one table.

The store enforces the table in one function, with guarded updates
(``UPDATE … WHERE state IN (…)``); an update of one instruction that changes no row raises
:class:`~packdist.errors.InvalidTransition`.
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

#: event -> (states it may start from, state it leads to). Every change of an instruction's
#: state is one of these events, applied by the store's one writer
#: (:meth:`packdist.store.instructions.InstructionQueries.apply`); no other SQL sets a state.
TRANSITIONS: dict[str, tuple[frozenset[InstructionState], InstructionState]] = {
    # a despooler worker takes due work under a lease
    "claim": (frozenset({S.PENDING, S.RETRYING}), S.SENDING),
    # the agent reported the package verified (an install), or gone (a removal)
    "installed": (frozenset({S.SENDING}), S.INSTALLED),
    "removed": (frozenset({S.SENDING}), S.REMOVED),
    # the attempt failed: again later, or never (limits, or a fault retrying cannot mend)
    "retry": (frozenset({S.SENDING}), S.RETRYING),
    "fail": (frozenset({S.SENDING}), S.FAILED),
    # the worker died or stalled (its lease ran out), or stopped cleanly and handed it back
    "lease_expired": (frozenset({S.SENDING}), S.RETRYING),
    "handed_back": (frozenset({S.SENDING}), S.RETRYING),
    # an operator cancelled the job, or removed the server
    "cancel": (frozenset({S.PENDING, S.SENDING, S.RETRYING}), S.CANCELLED),
    "server_removed": (frozenset({S.PENDING, S.SENDING, S.RETRYING}), S.CANCELLED),
    # a newer job with the opposite intent (install vs remove) came; an attempt under way
    # ends first, and if it did not succeed it is cancelled rather than retried
    "supersede": (frozenset({S.PENDING, S.RETRYING}), S.CANCELLED),
    "supersede_ended": (frozenset({S.SENDING}), S.CANCELLED),
    # an operator retried a finished job; a server came back, or an operator retried: due now
    "operator_retry": (frozenset({S.FAILED, S.CANCELLED}), S.PENDING),
    "wake": (frozenset({S.RETRYING}), S.RETRYING),
}

#: the state every instruction is created in
INITIAL: InstructionState = S.PENDING

_LEASE = frozenset({"lease_owner", "lease_expires_at"})
_ENDED = _LEASE | {"finished_at", "last_error", "error_kind"}
_CANCELLED = _ENDED | {"cancel_cause"}  # who or what cancelled it, in words

#: event -> the columns besides ``state`` and ``updated_at`` it may set (the store refuses
#: any other): what each event means for the rest of the row.
EFFECTS: dict[str, frozenset[str]] = {
    "claim": _LEASE | {"attempts", "claimed_at"},
    "installed": _ENDED,
    "removed": _ENDED,
    "retry": _LEASE | {"last_error", "error_kind", "next_attempt_at"},
    "fail": _ENDED,
    "lease_expired": _LEASE | {"last_error", "error_kind", "next_attempt_at"},
    "handed_back": _LEASE | {"next_attempt_at"},
    "cancel": _CANCELLED,
    "server_removed": _CANCELLED,
    "supersede": _CANCELLED,
    "supersede_ended": _CANCELLED,
    "operator_retry": frozenset(
        {"next_attempt_at", "finished_at", "attempts_base", "superseded_by", "cancel_cause"}
    ),
    "wake": frozenset({"next_attempt_at"}),
}

TERMINAL: frozenset[InstructionState] = frozenset({S.INSTALLED, S.REMOVED, S.FAILED, S.CANCELLED})

#: the states of an instruction whose server receives its package now or soon (a peer to
#: the others: the tracker's swarm); a retrying one only once its retry is due
RECEIVING: frozenset[InstructionState] = frozenset({S.PENDING, S.SENDING, S.RETRYING})
BACKING_OFF: InstructionState = S.RETRYING  # of RECEIVING, the one that may wait a back-off
#: the states an operator is shown first (a server's newest instruction in one: in trouble)
TROUBLE: frozenset[InstructionState] = frozenset({S.RETRYING, S.FAILED})

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


class RolloutState(StrEnum):
    RUNNING = "running"  # its waves start one after the other, each once the last is done
    PAUSED = "paused"  # no wave starts (a wave failed, or an operator paused it); started
    #                    waves' instructions keep running: no server loses its instruction
    SUCCEEDED = "succeeded"  # every wave started and was judged (terminal)
    CANCELLED = "cancelled"  # an operator cancelled it (terminal)


class WaveState(StrEnum):
    WAITING = "waiting"  # not started: the wave before is under way, or the rollout paused
    RUNNING = "running"  # its job is under way and the wave is not judged yet
    SUCCEEDED = "succeeded"  # installed everywhere, or failures within the error threshold
    FAILED = "failed"  # more of it failed than the error threshold allows (terminal)
    CANCELLED = "cancelled"  # its rollout was cancelled first (terminal)


R, W = RolloutState, WaveState

#: event -> (states a rollout may start from, state it leads to); applied by the store's one
#: writer of rollouts (:meth:`packdist.store.rollouts.RolloutQueries.apply_rollout`).
ROLLOUT_TRANSITIONS: dict[str, tuple[frozenset[RolloutState], RolloutState]] = {
    "pause": (frozenset({R.RUNNING}), R.PAUSED),  # an operator paused it
    "halt": (frozenset({R.RUNNING}), R.PAUSED),  # a wave failed past the threshold
    "resume": (frozenset({R.PAUSED}), R.RUNNING),  # an operator let it go on
    "finish": (frozenset({R.RUNNING}), R.SUCCEEDED),  # its last wave was judged
    "cancel": (frozenset({R.RUNNING, R.PAUSED}), R.CANCELLED),
}

#: the same for the waves of a rollout
WAVE_TRANSITIONS: dict[str, tuple[frozenset[WaveState], WaveState]] = {
    "start": (frozenset({W.WAITING}), W.RUNNING),  # its job was created
    "pass": (frozenset({W.RUNNING}), W.SUCCEEDED),
    "fail": (frozenset({W.RUNNING}), W.FAILED),
    "cancel": (frozenset({W.WAITING, W.RUNNING}), W.CANCELLED),
}

ROLLOUT_DONE: frozenset[RolloutState] = frozenset({R.SUCCEEDED, R.CANCELLED})
WAVE_JUDGED: frozenset[WaveState] = frozenset({W.SUCCEEDED, W.FAILED, W.CANCELLED})
