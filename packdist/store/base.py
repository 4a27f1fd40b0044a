"""The store interface, named by intent. SQLite implements it today; PostgreSQL joins later
(claims with ``FOR UPDATE SKIP LOCKED``) and must pass the same conformance suite."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from packdist.core.digest import Digest
from packdist.core.manifest import Manifest
from packdist.states import InstructionState, JobState, job_state


@dataclass(frozen=True)
class PackageRecord:
    id: str
    name: str
    version: str
    size: int
    file_count: int
    chunk_count: int
    created_at: float

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ServerRecord:
    name: str
    url: str
    groups: tuple[str, ...]
    created_at: float
    last_seen: float | None
    disk_free: int | None
    labels: tuple[tuple[str, str], ...] = ()  # location labels, sorted by key

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


@dataclass(frozen=True)
class SwarmMember:
    """A server that holds a package (``holder``) or is due to receive it: a possible source
    of that package's chunks for the others."""

    server: str
    url: str
    labels: tuple[tuple[str, str], ...]
    last_seen: float | None
    holder: bool


@dataclass(frozen=True)
class InstructionRecord:
    id: int
    job_id: str
    server: str
    state: InstructionState
    attempts: int
    last_error: str | None
    next_attempt_at: float
    bytes_sent: int
    bytes_total: int
    updated_at: float
    finished_at: float | None
    bytes_from_peers: int = 0  # of bytes_sent, what came from peers (the rest: the site)
    bytes_done: int = 0  # of bytes_total, what the server holds so far (the progress)


@dataclass(frozen=True)
class JobRecord:
    id: str
    package_id: str
    package_ref: str
    created_at: float
    max_attempts: int | None
    deadline: float | None
    options: dict[str, Any]
    instructions: tuple[InstructionRecord, ...] = field(default=())
    action: str = "install"  # what every instruction does: "install" or "remove"

    @property
    def state(self) -> JobState:
        return job_state((i.state for i in self.instructions), self.action)


@dataclass(frozen=True)
class Claim:
    """An instruction a despooler worker holds under a lease, with what it needs to act."""

    instruction_id: int
    job_id: str
    server: str
    server_url: str
    package_id: str
    package_ref: str
    attempts: int  # including this one
    attempts_base: int
    job_created_at: float
    max_attempts: int | None
    deadline: float | None
    lease: str = ""  # the lease owner this claim was made under
    options: dict[str, Any] = field(default_factory=dict)  # the job's flags ("repair")
    action: str = "install"  # "install" the package on the server, or "remove" it


@dataclass(frozen=True)
class EventRecord:
    id: int
    at: float
    job_id: str | None
    server: str | None
    kind: str
    message: str


@dataclass(frozen=True)
class StatusCell:
    """One cell of the package x server matrix, in detail: what the server holds and the
    newest instruction of that package for it (None when it never had one)."""

    package_ref: str
    package_id: str
    server: str
    installed: bool  # the server holds the package, verified (as last reported)
    state: InstructionState | None  # state of the newest instruction
    job_id: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    bytes_sent: int
    bytes_total: int
    updated_at: float | None
    corrupt: str | None = None  # what the last validation found wrong with the copy, in words
    action: str = "install"  # the action of the newest job ("remove": a removal job)


@dataclass(frozen=True)
class MetricsTotals:
    """What ``/metrics`` reports from the store: every figure only grows, except the gauges
    (instructions and jobs by state)."""

    instructions: dict[str, int]  # state -> count (every state present)
    jobs: dict[str, int]  # job state -> count (every state present)
    attempts: int  # sum of attempts of every instruction ever
    bytes_sent: int  # sum of bytes sent to agents
    events: dict[str, int]  # event kind -> count
    transfer_bounds: tuple[float, ...]  # histogram upper bounds (seconds)
    transfer_buckets: tuple[int, ...]  # cumulative count per bound
    transfer_count: int  # installs with a known duration (claim to verified)
    transfer_sum: float  # their total duration (seconds)


def describe_problems(problems: list[dict[str, str]], limit: int = 10) -> str:
    """``bin/tool altered, lib/x missing`` (at most ``limit`` paths named)."""
    words = [f"{p.get('path', '?')} {p.get('problem', 'altered')}" for p in problems[:limit]]
    if len(problems) > limit:
        words.append(f"and {len(problems) - limit} more")
    return ", ".join(words)


class Store(abc.ABC):
    """Everything packdist keeps, behind intent-named operations."""

    # --- site -----------------------------------------------------------------------------
    @abc.abstractmethod
    def init_site(self, name: str) -> None: ...

    @abc.abstractmethod
    def site_name(self) -> str: ...

    # --- packages and chunks --------------------------------------------------------------
    @abc.abstractmethod
    def known_chunks(self, digests: list[Digest]) -> set[Digest]: ...

    @abc.abstractmethod
    def add_package(
        self, manifest: Manifest, signature: bytes, new_chunks: dict[Digest, int]
    ) -> PackageRecord: ...

    @abc.abstractmethod
    def find_package(self, name: str, version: str) -> PackageRecord | None: ...

    @abc.abstractmethod
    def package_by_id(self, package_id: str) -> PackageRecord | None: ...

    @abc.abstractmethod
    def package_manifest(self, package_id: str) -> tuple[bytes, bytes]:
        """The canonical manifest and its signature."""

    @abc.abstractmethod
    def list_packages(self) -> list[PackageRecord]: ...

    # --- servers --------------------------------------------------------------------------
    @abc.abstractmethod
    def add_server(
        self,
        name: str,
        url: str,
        token_hash: str,
        groups: list[str],
        labels: dict[str, str] | None = None,
    ) -> None: ...

    @abc.abstractmethod
    def remove_server(self, name: str) -> int:
        """Remove a server, cancelling its unfinished instructions; returns how many."""

    @abc.abstractmethod
    def list_servers(self) -> list[ServerRecord]: ...

    @abc.abstractmethod
    def server_by_token_hash(self, token_hash: str) -> ServerRecord | None: ...

    @abc.abstractmethod
    def servers_in_group(self, group: str) -> list[str]: ...

    @abc.abstractmethod
    def swarm(self, package_id: str, now: float | None = None) -> list[SwarmMember]:
        """Servers that hold ``package_id`` (installed and not known corrupt) or are about
        to receive it (an instruction pending, sending, or retrying and due), by name."""

    @abc.abstractmethod
    def record_heartbeat(
        self,
        server: str,
        boot_id: str,
        disk_free: int | None,
        installed: list[str],
        now: float,
        offline_after: float,
    ) -> int:
        """Record a heartbeat. If the server was silent (or restarted), wake its retrying
        instructions so they are due now; returns how many were woken."""

    # --- jobs -----------------------------------------------------------------------------
    @abc.abstractmethod
    def add_job(
        self,
        package_id: str,
        servers: list[str],
        max_attempts: int | None,
        deadline: float | None,
        options: dict[str, Any],
        now: float,
        action: str = "install",
    ) -> str:
        """Create a job and its instructions (one per server) in one transaction.

        ``action``: ``install`` (the default) or ``remove``. A new job supersedes the
        opposite unfinished work for the same package on the same servers: a removal job
        cancels their unfinished install instructions, an install job their unfinished
        removal instructions (``last_error``: "superseded by removal job J" / "... by
        install job J"), in the same transaction. Refuses an empty target list
        (``NoTargets``), an unknown package or server (``NotFound``)."""

    @abc.abstractmethod
    def package_holders(self, package_id: str) -> list[str]:
        """Servers (not removed) that hold the package, as last reported, or have an
        unfinished install instruction for it: the targets of ``remove --everywhere``."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord: ...

    @abc.abstractmethod
    def list_jobs(self, limit: int = 100) -> list[JobRecord]: ...

    @abc.abstractmethod
    def cancel_job(self, job_id: str, now: float) -> int: ...

    @abc.abstractmethod
    def retry_job(self, job_id: str, now: float) -> int: ...

    # --- despooler ------------------------------------------------------------------------
    @abc.abstractmethod
    def claim_ready(
        self, owner: str, lease_seconds: float, limit: int, now: float
    ) -> list[Claim]: ...

    @abc.abstractmethod
    def renew_lease(
        self,
        instruction_id: int,
        owner: str,
        until: float,
        bytes_sent: int,
        bytes_total: int,
        bytes_from_peers: int = 0,
        bytes_done: int = 0,
    ) -> bool:
        """Extend a held lease and record progress (``bytes_sent``: all bytes the server
        received on the wire, ``bytes_from_peers`` of them from peers; ``bytes_done``: how
        much of the package it holds so far); False if the worker lost the lease
        (cancelled, expired)."""

    @abc.abstractmethod
    def mark_installed(self, instruction_id: int, owner: str, now: float) -> None: ...

    @abc.abstractmethod
    def mark_removed(self, instruction_id: int, owner: str, now: float) -> None:
        """A removal instruction is done: the agent no longer holds the version (the
        server's copy leaves the matrix at once)."""

    @abc.abstractmethod
    def schedule_retry(
        self, instruction_id: int, owner: str, error: str, retry_at: float, now: float
    ) -> None:
        """Back to ``retrying``, due at ``retry_at`` — or at once if the server came back
        (a heartbeat after silence) while this attempt was under way."""

    @abc.abstractmethod
    def mark_failed(self, instruction_id: int, owner: str, error: str, now: float) -> None: ...

    @abc.abstractmethod
    def recover_expired_leases(self, now: float) -> int:
        """Return instructions whose worker died (lease expired) to the queue."""

    @abc.abstractmethod
    def release_leases(self, owner: str, now: float) -> int:
        """A worker stopping cleanly hands its instructions back, due at once. Releases the
        leases held as ``owner`` and as ``owner:<anything>`` (one lease name per claim)."""

    @abc.abstractmethod
    def next_due_at(self) -> float | None: ...

    # --- validation -----------------------------------------------------------------------
    @abc.abstractmethod
    def record_validation(
        self, server: str, package_id: str, problems: list[dict[str, str]], now: float
    ) -> str | None:
        """Record what a validation found for one copy. With problems: mark the copy
        corrupt (the matrix shows it until a verified install clears it), write a
        ``corrupt`` event naming the paths and queue a repair job (options
        ``{"repair": true}``) unless one is unfinished; returns the new job's id. Without:
        clear an earlier mark. Unknown packages and removed servers are ignored (None)."""

    # --- views ----------------------------------------------------------------------------
    @abc.abstractmethod
    def status_matrix(self) -> dict[str, dict[str, str]]:
        """package ref -> server -> state word."""

    @abc.abstractmethod
    def events(self, job_id: str | None = None, after_id: int = 0) -> list[EventRecord]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- operator views (dashboard, metrics, events) ---------------------------------------
    @abc.abstractmethod
    def status_cells(self) -> list[StatusCell]:
        """Every (package, server) pair that has an instruction or an installed copy, for
        servers not removed; ordered by package ref, then server."""

    @abc.abstractmethod
    def recent_events(self, limit: int, job_id: str | None = None) -> list[EventRecord]:
        """The newest ``limit`` events (of one job if given), oldest first."""

    @abc.abstractmethod
    def metrics_totals(self, transfer_bounds: tuple[float, ...]) -> MetricsTotals: ...
