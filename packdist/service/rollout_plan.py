"""The arithmetic of a rollout, apart from any store: which servers each wave takes, and
when a running wave is judged.

Waves are cumulative: ``1,25%,100%`` is one server, then a quarter of the targets in all,
then every one. A percentage rounds up (a wave is never empty for want of a fraction), a
count past the number of targets means all of them, and the last wave must reach every
target: a rollout that stops at 40% by its own plan would leave servers without the
version and no one told.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from packdist.errors import UserError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class WaveSize:
    """A cumulative size: ``count`` servers, or ``percent`` of the targets."""

    count: int | None = None
    percent: float | None = None

    def of(self, total: int) -> int:
        if self.percent is not None:
            return min(total, math.ceil(self.percent * total / 100 - 1e-9))
        assert self.count is not None
        return min(total, self.count)

    def text(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


def parse_waves(text: str) -> list[WaveSize]:
    """``1,25%,100%`` -> the cumulative sizes; a clear error for anything else."""
    sizes: list[WaveSize] = []
    for n, part in enumerate(text.split(","), 1):
        found = _SIZE.match(part)
        if found is None:
            raise UserError(
                f"--waves: wave {n} {part.strip()!r} is not a count or a percentage"
                " (write e.g. 1,25%,100%)"
            )
        number, percent = float(found.group(1)), bool(found.group(2))
        if percent:
            if not 0 < number <= 100:
                raise UserError(f"--waves: wave {n} {part.strip()} is not between 0% and 100%")
            sizes.append(WaveSize(percent=number))
        else:
            if number != int(number) or number < 1:
                raise UserError(
                    f"--waves: wave {n} {part.strip()} is not a whole count of 1 or more"
                )
            sizes.append(WaveSize(count=int(number)))
    return sizes


def cut_waves(targets: list[str], sizes: list[WaveSize]) -> list[list[str]]:
    """The servers each wave adds, taking ``targets`` in order."""
    total, taken = len(targets), 0
    waves: list[list[str]] = []
    for n, size in enumerate(sizes, 1):
        upto = size.of(total)
        if upto <= taken:
            raise UserError(
                f"--waves: wave {n} ({size.text()} of {total} servers is {upto}) adds no server"
                f" to the {taken} before it"
            )
        waves.append(targets[taken:upto])
        taken = upto
    if taken < total:
        raise UserError(
            f"--waves: the waves reach {taken} of the {total} servers; make the last one 100%"
        )
    return waves


def spread_locations(servers: list[str], location_of: Mapping[str, str]) -> list[str]:
    """The servers reordered so that every stretch of them spans the locations evenly: one
    of each location in turn, each location's own servers in their order. So a wave taken
    from a group is never one congested branch office."""
    by_location: dict[str, list[str]] = {}
    for s in servers:
        by_location.setdefault(location_of.get(s, ""), []).append(s)
    # the smaller locations first where positions tie: with three servers at hq and one at
    # a branch, a wave of two takes one of each
    queues = sorted(by_location.values(), key=len)
    # each server at its fair position: the i-th of a location of n at (i + 0.5) / n
    slots = sorted(
        ((i + 0.5) / len(q), rank, s) for rank, q in enumerate(queues) for i, s in enumerate(q)
    )
    return [s for _, _, s in slots]


@dataclass(frozen=True)
class Verdict:
    """A running wave's judgment: ``passed`` True/False, or None (not yet)."""

    passed: bool | None
    failed: int  # servers counted failed
    waiting: int  # servers neither installed nor failed yet
    timed_out: bool = False  # the wave's timeout passed: its waiting servers counted failed


def judge(
    counts: Mapping[str, int],
    started_at: float,
    timeout: float,
    threshold: float,
    now: float,
    done: str = "installed",
) -> Verdict:
    """Judge a wave from its job's instruction counts by state.

    A server counts as failed when its instruction ended other than ``done`` (failed, or
    cancelled), or, once the wave's timeout passed, when it is still not done: a server that
    never reports trips the threshold too. The wave fails as soon as more than
    ``threshold`` percent of it failed; it passes once every server is done, or every
    instruction ended, or the timeout passed, within the threshold."""
    total = sum(counts.values())
    finished = counts.get(done, 0)
    ended_badly = counts.get("failed", 0) + counts.get("cancelled", 0) + counts.get("removed", 0)
    waiting = total - finished - ended_badly
    timed_out = now >= started_at + timeout
    failed = ended_badly + (waiting if timed_out else 0)
    if failed * 100 > threshold * total:
        return Verdict(False, failed, waiting, timed_out)
    if waiting == 0 or timed_out:
        return Verdict(True, failed, waiting, timed_out)
    return Verdict(None, failed, waiting, timed_out)
