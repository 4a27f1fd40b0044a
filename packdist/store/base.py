"""The store's records and its interface (kept here so that older imports keep working)."""

from __future__ import annotations

from packdist.store.core import Store
from packdist.store.records import (
    Claim,
    EventRecord,
    InstructionRecord,
    JobRecord,
    MetricsTotals,
    PackageRecord,
    ServerRecord,
    StatusCell,
    SwarmMember,
    describe_problems,
)

__all__ = [
    "Claim",
    "EventRecord",
    "InstructionRecord",
    "JobRecord",
    "MetricsTotals",
    "PackageRecord",
    "ServerRecord",
    "StatusCell",
    "Store",
    "SwarmMember",
    "describe_problems",
]
