"""What the store holds, as plain records; the rows of its tables mapped by column name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    error_kind: str | None = None  # the kind of the last failure (packdist.errors.ErrorKind)
    phase: str | None = None  # where the attempt under way is, in its target's words
    cancel_cause: str | None = None  # who or what cancelled it, in words (None: not cancelled)


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
    #: state -> how many of the job's instructions are in it (every state present), from
    #: the store's summary; empty when the record was built from its instructions alone
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """How many instructions the job has (all of them, whatever page was read)."""
        return sum(self.counts.values()) if self.counts else len(self.instructions)

    @property
    def state(self) -> JobState:
        if self.counts:  # a job's state depends only on which states its instructions are in
            present = (InstructionState(s) for s, n in self.counts.items() if n > 0)
            return job_state(present, self.action)
        return job_state((i.state for i in self.instructions), self.action)


#: whose due work a claim takes (``child`` of ``claim_candidates``): any server's, only this
#: site's own servers', or else the servers' behind the child site of that name
ANY_SERVER, OWN_SERVERS = "*", ""


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
    server_last_seen: float | None = None  # the server's last heartbeat, when claimed


@dataclass(frozen=True)
class EventRecord:
    id: int
    at: float
    job_id: str | None
    server: str | None
    kind: str
    message: str
    actor: str | None = None  # the operator whose action it records (None: the site's own)


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
    error_kind: str | None = None  # the kind of the newest instruction's last failure
    cancel_cause: str | None = None  # who or what cancelled the newest instruction


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


@dataclass(frozen=True)
class ChildSiteRecord:
    """A child site as its parent knows it: where it is reached, when it last reported,
    its authority and its link's limits (its servers are rows of ``servers``)."""

    name: str
    url: str
    created_at: float
    last_seen: float | None
    site_name: str | None
    ca: str | None = None  # the child's certificate authority (PEM): what its TLS is checked with
    bandwidth: float | None = None  # bytes/s sent to it at most, all its streams together
    windows: str = "{}"  # when the link may carry packages (JSON: see packdist.core.schedule)
