"""One writer of state: no statement but the store's ``transition`` sets an instruction's
state, and that one applies only the events of the table in ``packdist.states``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from packdist import states
from packdist.store import queries
from packdist.store.sqlite import SQLiteStore
from tests.unit.store_conformance import T0, add_package, add_server

PACKAGE = Path(__file__).resolve().parents[2] / "packdist"
SET_CLAUSE = re.compile(r"\bSET\b(.*?)(?:\bWHERE\b|\bRETURNING\b|$)", re.IGNORECASE | re.DOTALL)
STATE_ASSIGNED = re.compile(r"(?:^|,)\s*state\s*=", re.IGNORECASE)


def text_or_empty(name: str, dialect: str) -> str:
    try:
        return queries.text(name, dialect)
    except KeyError:  # a query of the other dialect only
        return ""


def sets_state(sql: str) -> bool:
    return any(STATE_ASSIGNED.search(m.group(1)) for m in SET_CLAUSE.finditer(sql))


SQL_IN_PYTHON = re.compile(r"\b(UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+\w+", re.IGNORECASE)


def test_only_the_transition_queries_set_a_state() -> None:
    setting = {
        name
        for name in queries.names()
        for dialect in ("sqlite", "postgresql")
        if sets_state(text_or_empty(name, dialect))
    }
    # an instruction's, a rollout's and a wave's: each applies only its table's events
    assert setting == {"transition", "rollout_transition", "wave_transition"}
    assert sets_state("UPDATE instructions SET attempts = 1, state = 'failed' WHERE id = 1")
    assert not sets_state("UPDATE instructions SET lease_owner = NULL WHERE state = 'sending'")


def test_instructions_are_created_only_in_the_initial_state() -> None:
    inserting = {
        name
        for name in queries.names()
        if re.search(r"INSERT\s+INTO\s+instructions\b", text_or_empty(name, "sqlite"), re.I)
    }
    assert inserting == {"insert_instruction"}
    assert states.INITIAL is states.InstructionState.PENDING


def test_no_python_module_holds_sql_of_its_own() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SQL_IN_PYTHON.search(line) and ('"' in line or "'" in line):
                found.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert found == [], "SQL outside queries.sql:\n" + "\n".join(found)


def test_an_event_may_not_set_a_column_outside_its_effects(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "site.db")
    try:
        store.init_site("s", T0)
        with pytest.raises(ValueError, match="may not set"):
            store.apply("wake", [1], T0, last_error="sneaked in")
        with pytest.raises(ValueError, match="may not set"):
            store.apply("claim", [1], T0, finished_at=T0)
    finally:
        store.close()


def test_applying_an_event_changes_only_instructions_in_its_source_states(
    tmp_path: Path,
) -> None:
    from packdist.service import Service

    store = SQLiteStore(tmp_path / "site.db")
    try:
        store.init_site("s", T0)
        pkg = add_package(store, "app")
        add_server(store, "dp1")
        add_server(store, "dp2")
        job_id = Service(store).add_job(pkg.id, ["dp1", "dp2"], None, None, {}, T0)
        ids = [i.id for i in store.get_job(job_id).instructions]
        # pending instructions cannot be woken (wake starts from retrying only)
        assert store.apply("wake", ids, T0, next_attempt_at=T0) == []
        changed = store.apply("cancel", ids[:1], T0, finished_at=T0, cancel_cause="test")
        assert [r["id"] for r in changed] == ids[:1]
        states_now = {i.id: i.state for i in store.get_job(job_id).instructions}
        assert states_now == {ids[0]: "cancelled", ids[1]: "pending"}
    finally:
        store.close()


def test_a_rollout_event_from_a_state_it_does_not_start_from_changes_nothing(
    tmp_path: Path,
) -> None:
    from packdist.errors import InvalidTransition
    from packdist.service import Service
    from packdist.service.rollout_plan import parse_waves
    from packdist.service.rollouts import RolloutPlan
    from packdist.states import RolloutState

    store = SQLiteStore(tmp_path / "site.db")
    try:
        store.init_site("s", T0)
        pkg = add_package(store, "app")
        add_server(store, "dp1")
        rid = Service(store).create_rollout(RolloutPlan(pkg.id, ["dp1"], parse_waves("1")), T0)
        with pytest.raises(InvalidTransition):
            store.apply_rollout("resume", rid, T0)  # running: resume starts only from paused
        with pytest.raises(InvalidTransition):
            store.apply_wave("pass", rid, 1)  # waiting: only a running wave is judged
        with pytest.raises(ValueError, match="may not set"):
            store.apply_rollout("pause", rid, T0, package_id="sneaked in")
        rollout = store.rollout(rid)
        assert rollout is not None and rollout.state is RolloutState.RUNNING
    finally:
        store.close()
