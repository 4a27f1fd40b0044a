"""How busy the machine's processors are, from ``/proc/stat``: what tells the site whether
compressing a chunk stream would cost time rather than save it.

Compressing pays in time only where the link is the bound and the processors have time to
spare. Where they have none (a busy site, or on loopback, where the agent at the other end
shares the same cores), every second spent compressing is taken from the transfer itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuTimes:
    """The machine's processor time so far (clock ticks): idle and all."""

    idle: int
    total: int

    @classmethod
    def now(cls, source: Path = PROC_STAT) -> CpuTimes | None:
        """The times now; None where the system does not say (no ``/proc``)."""
        try:
            with source.open("rb") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if len(fields) < 5 or fields[0] != b"cpu":
            return None
        ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        return cls(idle, sum(ticks))

    def idle_share_since(self, earlier: CpuTimes | None) -> float:
        """The share of processor time spent idle between ``earlier`` and this sample (1.0
        when unknown: no sample, or no tick counted between them)."""
        if earlier is None or self.total <= earlier.total:
            return 1.0
        return (self.idle - earlier.idle) / (self.total - earlier.total)
