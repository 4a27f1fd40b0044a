"""Use cases of rollouts: a package onto many servers in waves, each wave starting only once
the one before is installed, pausing when a wave fails past its error threshold.

A rollout keeps no instruction of its own: each wave, when it starts, is an ordinary job
(an activation job when the rollout activates), so a server of a started wave keeps every
guarantee of a job's instruction — leases, retries, a server that comes back still
installs — whatever becomes of the rollout. Pausing stops only the start of later waves.
The site's serve loop calls :meth:`RolloutUseCases.advance_rollouts` about once a second
(any number of site workers may: the store's guarded updates let one of them win).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from packdist import states
from packdist.core.schedule import Schedule
from packdist.core.words import counted
from packdist.errors import InvalidTransition, NotFound, UserError
from packdist.protocol.messages import MAX_CHECK_TIMEOUT as MAX_HEALTH_TIMEOUT
from packdist.service.activation import (
    ACTIVATE,
    DEFAULT_HEALTH_TIMEOUT,
    HEALTH_CHECK,
    HEALTH_TIMEOUT,
    ActivationUseCases,
)
from packdist.service.jobs import named
from packdist.service.rollout_plan import WaveSize, cut_waves, judge, spread_locations
from packdist.states import InstructionState, RolloutState, WaveState
from packdist.store.db import Row
from packdist.store.rollouts import RolloutRecord, WaveRecord

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HEALTH_TIMEOUT",
    "HEALTH_CHECK",
    "HEALTH_TIMEOUT",
    "RolloutPlan",
    "RolloutUseCases",
]

DEFAULT_WAVE_TIMEOUT = 1800.0  # seconds: a wave whose servers never report is judged then
ROLLOUT = "rollout"  # job option: the rollout a wave's job belongs to
CAUSES_SHOWN = 3  # servers whose error a failed wave's words quote
DONE_WORDS = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}  # an operator's


@dataclass(frozen=True)
class RolloutPlan:
    """What an operator asked for, checked (the CLI and the dashboard build one)."""

    package_id: str
    targets: list[str]  # in the order waves take them
    sizes: list[WaveSize]
    error_threshold: float = 0.0
    wave_timeout: float = DEFAULT_WAVE_TIMEOUT
    activate: bool = False
    health_check: list[str] | None = None
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    schedule: Schedule = field(default_factory=Schedule)
    spread: str | None = None  # the location label to spread waves by (targets of a group)


def check_health_command(argv: list[str]) -> None:
    """A health check names a program inside the package by its relative path (the agent
    checks again, against the tree: this words it before anything is recorded)."""
    path = argv[0] if argv else ""
    if not path or path.startswith("/") or ".." in path.split("/") or "\\" in path:
        raise UserError(
            f"--health-check {path!r}: name a program inside the package by its relative path"
        )


class RolloutUseCases(ActivationUseCases):
    def create_rollout(self, plan: RolloutPlan, now: float) -> str:
        """Check the plan, cut it into waves, and record the rollout (its first wave starts
        at the serve loop's next pass). Nothing is recorded if any of it is wrong."""
        if not 0 <= plan.error_threshold <= 100:
            raise UserError("--error-threshold must be a percentage from 0 to 100")
        if plan.wave_timeout <= 0:
            raise UserError("--wave-timeout must be more than 0 seconds")
        if plan.health_check and not plan.activate:
            raise UserError("--health-check needs --activate (it guards the switch)")
        if plan.health_check:
            check_health_command(plan.health_check)
            if not 0 < plan.health_timeout <= MAX_HEALTH_TIMEOUT:
                raise UserError(
                    f"--health-timeout must be more than 0 and at most {MAX_HEALTH_TIMEOUT:g}s"
                )
        store = self.store
        with store.transaction():
            pkg = store.package_by_id(plan.package_id)
            if pkg is None:
                raise NotFound(f"no package with id {plan.package_id[:12]}…")
            targets = list(dict.fromkeys(plan.targets))
            known = store.live_server_names(targets)
            unknown = [s for s in targets if s not in known]
            if unknown:
                raise NotFound(f"unknown server(s): {', '.join(unknown[:5])}")
            if plan.activate:
                self.refuse_behind_child(targets)
            if plan.spread is not None:  # the targets' own labels, not the whole fleet's
                where = {r.name: r.label(plan.spread) or "" for r in store.servers_named(targets)}
                targets = spread_locations(targets, where)
            waves = cut_waves(targets, plan.sizes)
            options: dict[str, Any] = {}
            if plan.activate:
                options[ACTIVATE] = True
            if plan.health_check:
                options[HEALTH_CHECK] = list(plan.health_check)
                options[HEALTH_TIMEOUT] = plan.health_timeout
            rollout_id = "r" + secrets.token_hex(5)
            store.insert_rollout(
                rollout_id,
                pkg.id,
                waves,
                plan.error_threshold,
                plan.wave_timeout,
                options,
                plan.schedule.to_json(),
                now,
            )
            sizes = ", ".join(str(len(w)) for w in waves)
            message = (
                f"rollout {rollout_id} created: {pkg.ref} to {counted(len(targets), 'server')}"
                f" in {counted(len(waves), 'wave')} ({sizes}){self._by()}"
            )
            store.add_event("rollout", message, now=now, actor=self.actor)
            store.notify()
        return rollout_id

    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        found = self.store.rollout(rollout_id)
        if found is None:
            raise NotFound(f"no rollout {rollout_id} (see 'packdist rollout list')")
        return found

    def pause_rollout(self, rollout_id: str, now: float) -> None:
        self._operator_event(rollout_id, "pause", f"paused{self._by() or ' by an operator'}", now)

    def resume_rollout(self, rollout_id: str, now: float) -> None:
        """Let a paused rollout go on: the next wave starts even if the last one failed (the
        operator looked and judged it); its failed servers keep their instructions."""
        self._operator_event(rollout_id, "resume", None, now)

    def cancel_rollout(self, rollout_id: str, now: float) -> int:
        """End a rollout: no wave starts again, and the unfinished instructions of every
        wave that started (a failed wave's retries too) are cancelled. Servers that
        installed keep the version. Returns how many instructions were cancelled."""
        store = self.store
        n = 0
        with store.transaction():
            rollout = self._operator_event(rollout_id, "cancel", f"cancelled{self._by()}", now)
            for wave in rollout.waves:
                if wave.state in states.WAVE_TRANSITIONS["cancel"][0]:
                    store.apply_wave("cancel", rollout_id, wave.number, judged_at=now)
                if wave.job_id is not None:
                    n += self.cancel_job(wave.job_id, now)
        return n

    def _operator_event(
        self, rollout_id: str, event: str, why: str | None, now: float
    ) -> RolloutRecord:
        """Apply an operator's event to the rollout as it is now (locked): the rollout."""
        store = self.store
        with store.transaction():
            rollout = store.lock_rollout(rollout_id)
            if rollout is None:
                raise NotFound(f"no rollout {rollout_id} (see 'packdist rollout list')")
            if rollout.state not in states.ROLLOUT_TRANSITIONS[event][0]:
                raise UserError(f"rollout {rollout_id} is {rollout.state.value}: cannot {event} it")
            store.apply_rollout(event, rollout_id, now, why=why)
            message = f"rollout {rollout_id} {DONE_WORDS[event]}{self._by()}"
            store.add_event("rollout", message, now=now, actor=self.actor)
            store.notify()
        return rollout

    # --- the serve loop's part --------------------------------------------------------------

    def advance_rollouts(self, now: float) -> int:
        """Judge running waves, pause on failure, start the next wave where one may start,
        finish rollouts whose last wave was judged. Returns how many changes it made."""
        changes = 0
        for rollout_id in self.store.unfinished_rollout_ids():
            try:
                with self.store.transaction():
                    # as it is now, locked: an operator's pause or cancel that came after
                    # the list was read holds (it is seen here, or waits for this)
                    rollout = self.store.lock_rollout(rollout_id)
                    if rollout is not None and rollout.state not in states.ROLLOUT_DONE:
                        changes += self._advance(rollout, now)
            except InvalidTransition:  # another site worker got there first: its change holds
                log.debug("rollout %s advanced by another worker", rollout_id)
            except Exception:  # one rollout's fault must not stop the others
                log.exception("advancing rollout %s failed; the others go on", rollout_id)
        return changes

    def _advance(self, rollout: RolloutRecord, now: float) -> int:
        store = self.store
        changes = 0
        running = [w for w in rollout.waves if w.state is WaveState.RUNNING]
        state = rollout.state
        for wave in running:
            changes += 1 if self._judge(rollout, wave, now) else 0
        if changes:  # re-read: a wave just judged may have paused it
            fresh = store.rollout(rollout.id)
            assert fresh is not None
            rollout, state = fresh, fresh.state
        if state is not RolloutState.RUNNING:
            return changes
        if any(w.state is WaveState.RUNNING for w in rollout.waves):
            return changes
        waiting = [w for w in rollout.waves if w.state is WaveState.WAITING]
        if not waiting:
            failed = [str(w.number) for w in rollout.waves if w.state is WaveState.FAILED]
            store.apply_rollout("finish", rollout.id, now, why=None)
            message = f"rollout {rollout.id} succeeded: {rollout.package_ref} on every wave"
            if failed:  # resumed past a failed wave: an operator judged it, say which
                message = (
                    f"rollout {rollout.id} succeeded: every wave of {rollout.package_ref}"
                    f" started; wave {', '.join(failed)} failed and was resumed past"
                )
            store.add_event("rollout", message, now=now)
            return changes + 1
        closed = Schedule.from_json(rollout.schedule).closed_words(now)
        if closed is not None:
            if rollout.why != closed:
                store.set_rollout_why(rollout.id, closed)
            return changes
        return changes + self._start(rollout, waiting[0], now)

    def _start(self, rollout: RolloutRecord, wave: WaveRecord, now: float) -> int:
        store = self.store
        options = {**rollout.options, ROLLOUT: rollout.id}
        servers = store.live_server_names(list(wave.servers))
        targets = [s for s in wave.servers if s in servers]  # a removed server: not targeted
        job_id = None
        if targets:
            job_id = self.add_job(rollout.package_id, targets, None, None, options, now)
        store.apply_wave("start", rollout.id, wave.number, started_at=now, job_id=job_id)
        store.set_rollout_why(rollout.id, None)
        total = len(rollout.waves)
        message = (
            f"rollout {rollout.id}: wave {wave.number} of {total} started,"
            f" {rollout.package_ref} to {named(targets) if targets else 'no server left'}"
        )
        store.add_event("rollout", message, job_id, now=now)
        store.notify()
        return 1

    def _judge(self, rollout: RolloutRecord, wave: WaveRecord, now: float) -> bool:
        store = self.store
        assert wave.started_at is not None
        counts = {} if wave.job_id is None else store.job_counts([wave.job_id])[wave.job_id]
        verdict = judge(counts, wave.started_at, rollout.wave_timeout, rollout.error_threshold, now)
        if verdict.passed is None:
            return False
        n = len(wave.servers)
        if verdict.passed:
            store.apply_wave("pass", rollout.id, wave.number, judged_at=now, failed=verdict.failed)
            failed = f", {verdict.failed} failed within the threshold" if verdict.failed else ""
            message = f"rollout {rollout.id}: wave {wave.number} succeeded ({counted(n, 'server')}{failed})"
            store.add_event("rollout", message, wave.job_id, now=now)
            return True
        store.apply_wave("fail", rollout.id, wave.number, judged_at=now, failed=verdict.failed)
        late = verdict.waiting if verdict.timed_out else 0
        timed_out = f", {late} not installed after {rollout.wave_timeout:g}s" if late else ""
        why = (
            f"wave {wave.number} failed: {verdict.failed} of {counted(n, 'server')}{timed_out}"
            f" (threshold {rollout.error_threshold:g}%){self._causes(wave.job_id, bool(late))}"
        )
        if rollout.state is RolloutState.RUNNING:
            store.apply_rollout("halt", rollout.id, now, why=why)
            why += "; paused: no later wave starts until 'packdist rollout resume'"
        else:
            store.set_rollout_why(rollout.id, why)
        store.add_event("rollout", f"rollout {rollout.id}: {why}", wave.job_id, now=now)
        return True

    def _causes(self, job_id: str | None, timed_out: bool) -> str:
        """``: dp3: <its last error>; dp7: …`` for the first servers that failed a wave
        (those still not installed too, when its timeout passed): the cause in words,
        where the operator looks first."""
        if job_id is None:
            return ""
        wanted = {InstructionState.FAILED, InstructionState.CANCELLED}
        if timed_out:
            wanted |= set(states.RECEIVING)
        rows = self.store.job_instructions_page(job_id, wanted, limit=CAUSES_SHOWN)
        words = [f"{r['server']}: {_cause(r)}" for r in rows]
        return f": {'; '.join(words)}" if words else ""


def _cause(row: Row) -> str:
    """Why an instruction of a failed wave is not installed: what cancelled it (not the
    failure before an operator's cancel), its last error, or its state."""
    if row["state"] == InstructionState.CANCELLED:
        return str(row["cancel_cause"] or "cancelled")
    return str(row["last_error"] or f"{row['state']}, no error yet")
