"""The transition table and the job state derived from instruction states."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packdist import states
from packdist.states import (
    TERMINAL,
    TRANSITIONS,
    InstructionState,
    JobState,
    can,
    job_state,
    sources,
    target,
)

S = InstructionState
ALL = frozenset(S)

#: The table as the design fixes it: event -> (from, to).
EXPECTED: dict[str, tuple[frozenset[InstructionState], InstructionState]] = {
    "claim": (frozenset({S.PENDING, S.RETRYING}), S.SENDING),
    "installed": (frozenset({S.SENDING}), S.INSTALLED),
    "removed": (frozenset({S.SENDING}), S.REMOVED),
    "retry": (frozenset({S.SENDING}), S.RETRYING),
    "fail": (frozenset({S.SENDING}), S.FAILED),
    "lease_expired": (frozenset({S.SENDING}), S.RETRYING),
    "handed_back": (frozenset({S.SENDING}), S.RETRYING),
    "cancel": (frozenset({S.PENDING, S.SENDING, S.RETRYING}), S.CANCELLED),
    "server_removed": (frozenset({S.PENDING, S.SENDING, S.RETRYING}), S.CANCELLED),
    "supersede": (frozenset({S.PENDING, S.RETRYING}), S.CANCELLED),
    "supersede_ended": (frozenset({S.SENDING}), S.CANCELLED),
    "operator_retry": (frozenset({S.FAILED, S.CANCELLED}), S.PENDING),
    "wake": (frozenset({S.RETRYING}), S.RETRYING),
}


def test_state_values_are_the_contract_words() -> None:
    assert {s.value for s in S} == {
        "pending",
        "sending",
        "installed",
        "removed",
        "retrying",
        "failed",
        "cancelled",
    }
    assert {j.value for j in JobState} == {"active", "succeeded", "failed", "cancelled"}


def test_terminal_states() -> None:
    assert frozenset({S.INSTALLED, S.REMOVED, S.FAILED, S.CANCELLED}) == TERMINAL


def test_the_table_is_exactly_the_designed_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize("event", sorted(EXPECTED))
def test_sources_and_target_of_every_event(event: str) -> None:
    expected_from, expected_to = EXPECTED[event]
    assert sources(event) == expected_from
    assert target(event) is expected_to
    for state in S:
        assert can(event, state) is (state in expected_from)


def test_every_source_set_is_non_empty() -> None:
    for event, (froms, _) in TRANSITIONS.items():
        assert froms, event


def test_unknown_event_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        sources("teleport")
    with pytest.raises(KeyError):
        can("teleport", S.PENDING)


def test_terminal_states_have_no_way_out_but_operator_retry() -> None:
    for event, (froms, _) in TRANSITIONS.items():
        leaving = froms & TERMINAL
        if event == "operator_retry":
            assert leaving == {S.FAILED, S.CANCELLED}
        else:
            assert not leaving, f"{event} leaves terminal state(s) {sorted(leaving)}"


def test_installed_is_final() -> None:
    assert not [event for event in TRANSITIONS if can(event, S.INSTALLED)]


def test_installed_is_reachable_only_from_sending() -> None:
    into_installed = {
        event: froms for event, (froms, to) in TRANSITIONS.items() if to is S.INSTALLED
    }
    assert into_installed == {"installed": frozenset({S.SENDING})}


def test_removed_is_final_and_reachable_only_from_sending() -> None:
    assert not [event for event in TRANSITIONS if can(event, S.REMOVED)]
    into_removed = {event: froms for event, (froms, to) in TRANSITIONS.items() if to is S.REMOVED}
    assert into_removed == {"removed": frozenset({S.SENDING})}


def test_only_claim_leads_to_sending() -> None:
    assert [e for e, (_, to) in TRANSITIONS.items() if to is S.SENDING] == ["claim"]


def test_every_non_terminal_state_can_be_cancelled() -> None:
    assert sources("cancel") == ALL - TERMINAL


def test_every_state_is_reachable_from_pending() -> None:
    seen = {S.PENDING}
    frontier = [S.PENDING]
    while frontier:
        state = frontier.pop()
        for froms, to in TRANSITIONS.values():
            if state in froms and to not in seen:
                seen.add(to)
                frontier.append(to)
    assert seen == ALL


def test_a_retrying_instruction_is_never_dropped() -> None:
    # The SMS despooler lost a failed server's retry and called the job complete. Here a
    # retrying instruction can only be claimed again, woken, or cancelled by an operator.
    # (or superseded by a newer job of the opposite intent, or its server removed).
    leaving = {e: to for e, (froms, to) in TRANSITIONS.items() if S.RETRYING in froms}
    assert leaving == {
        "claim": S.SENDING,
        "wake": S.RETRYING,
        "cancel": S.CANCELLED,
        "server_removed": S.CANCELLED,
        "supersede": S.CANCELLED,
    }


def test_every_event_says_which_columns_it_may_set() -> None:
    assert set(states.EFFECTS) == set(TRANSITIONS)
    ending = [e for e, (_, to) in TRANSITIONS.items() if to in TERMINAL]
    for event in ending:  # a terminal state records when and why it ended
        assert {"finished_at", "last_error"} <= states.EFFECTS[event], event
    for event, (froms, _) in TRANSITIONS.items():
        if S.SENDING in froms:  # leaving sending always drops the lease
            assert {"lease_owner", "lease_expires_at"} <= states.EFFECTS[event], event


# --- job state ----------------------------------------------------------------------------


def test_a_job_without_instructions_is_failed_never_succeeded() -> None:
    assert job_state([]) is JobState.FAILED
    assert job_state(iter(())) is JobState.FAILED


@pytest.mark.parametrize("active", sorted(ALL - TERMINAL))
def test_a_job_is_active_while_any_instruction_is_not_terminal(active: InstructionState) -> None:
    assert job_state([active]) is JobState.ACTIVE
    for other in S:
        assert job_state([other, active]) is JobState.ACTIVE
        assert job_state([active, other]) is JobState.ACTIVE


def test_all_installed_is_succeeded() -> None:
    assert job_state([S.INSTALLED]) is JobState.SUCCEEDED
    assert job_state([S.INSTALLED] * 5) is JobState.SUCCEEDED


def test_any_failure_among_terminal_states_is_failed() -> None:
    assert job_state([S.FAILED]) is JobState.FAILED
    assert job_state([S.INSTALLED, S.FAILED]) is JobState.FAILED
    assert job_state([S.CANCELLED, S.FAILED, S.INSTALLED]) is JobState.FAILED


def test_a_removal_job_succeeds_only_when_every_instruction_is_removed() -> None:
    assert job_state([S.REMOVED], "remove") is JobState.SUCCEEDED
    assert job_state([S.REMOVED] * 3, "remove") is JobState.SUCCEEDED
    # what an install job needs is not what a removal job needs, and the reverse
    assert job_state([S.INSTALLED], "remove") is not JobState.SUCCEEDED
    assert job_state([S.REMOVED], "install") is not JobState.SUCCEEDED
    assert job_state([S.REMOVED, S.RETRYING], "remove") is JobState.ACTIVE
    assert job_state([S.REMOVED, S.FAILED], "remove") is JobState.FAILED
    assert job_state([S.REMOVED, S.CANCELLED], "remove") is JobState.CANCELLED
    assert job_state([], "remove") is JobState.FAILED


@given(
    st.lists(st.sampled_from(list(S)), min_size=1, max_size=6),
    st.lists(st.sampled_from(sorted(TRANSITIONS)), max_size=30),
)
def test_no_event_sequence_succeeds_a_removal_job_with_a_target_left(
    start: list[InstructionState], events: list[str]
) -> None:
    """A removal job is succeeded only when every instruction left ``sending`` as
    ``removed`` (the agent confirmed the version gone)."""
    current = [S.PENDING for _ in start]
    confirmed = [False for _ in start]
    for n, event in enumerate(events):
        i = n % len(current)
        if can(event, current[i]):
            current[i] = target(event)
            if event == "removed":
                confirmed[i] = True
    if job_state(current, "remove") is JobState.SUCCEEDED:
        assert all(confirmed)


def test_cancelled_without_failure_is_cancelled() -> None:
    assert job_state([S.CANCELLED]) is JobState.CANCELLED
    assert job_state([S.INSTALLED, S.CANCELLED]) is JobState.CANCELLED


def test_job_state_accepts_a_generator() -> None:
    assert job_state(s for s in [S.INSTALLED, S.INSTALLED]) is JobState.SUCCEEDED


@given(st.lists(st.sampled_from(list(S)), max_size=8))
def test_job_state_matches_its_definition(instruction_states: list[InstructionState]) -> None:
    got = job_state(instruction_states)
    if not instruction_states:
        assert got is JobState.FAILED
    elif any(s not in TERMINAL for s in instruction_states):
        assert got is JobState.ACTIVE
    elif all(s is S.INSTALLED for s in instruction_states):
        assert got is JobState.SUCCEEDED
    elif S.FAILED not in instruction_states and S.CANCELLED not in instruction_states:
        assert got is JobState.CANCELLED  # terminal, some removed: not what an install needs
    elif S.FAILED in instruction_states:
        assert got is JobState.FAILED
    else:
        assert got is JobState.CANCELLED
    # Order never matters.
    assert job_state(reversed(instruction_states)) is got
    # Succeeded only if every instruction (there is at least one) is installed.
    if got is JobState.SUCCEEDED:
        assert instruction_states
        assert set(instruction_states) == {S.INSTALLED}


@given(
    st.lists(st.sampled_from(list(S)), min_size=1, max_size=6),
    st.lists(st.sampled_from(sorted(TRANSITIONS)), max_size=30),
)
def test_no_event_sequence_succeeds_a_job_with_a_target_missing(
    start: list[InstructionState], events: list[str]
) -> None:
    """Apply events (where the table allows them) to instructions; a job is succeeded only
    when every instruction went through ``installed``, i.e. left ``sending`` that way."""
    current = [S.PENDING for _ in start]
    delivered = [False for _ in start]
    for n, event in enumerate(events):
        i = n % len(current)
        if can(event, current[i]):
            current[i] = target(event)
            if event == "installed":
                delivered[i] = True
    if job_state(current) is JobState.SUCCEEDED:
        assert all(delivered)


def test_module_exports() -> None:
    assert states.S is InstructionState
