"""What the stage tests share: a real agent home in a temporary folder, a package laid out
in its staging tree by the real layout stage, and a look at what each chunk's places hold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packdist.agent.home import AgentHome
from packdist.agent.install_record import Install
from packdist.agent.local_stage import lay_out
from packdist.agent.peering import ChunkView
from packdist.agent.write_plan import WritePlan, pread
from packdist.core.digest import Digest
from tests.unit.test_agent_home import Package


def new_home(root: Path) -> AgentHome:
    home = AgentHome(root)
    home.prepare()
    return home


@dataclass
class Staged:
    """A package laid out in ``home``'s staging tree, nothing in it yet."""

    home: AgentHome
    pkg: Package
    inst: Install
    plan: WritePlan
    staging: Path

    @property
    def have(self) -> set[Digest]:
        assert self.inst.view is not None and self.inst.view.have is not None
        return self.inst.view.have

    def holds(self, digest: Digest) -> list[bool]:
        """For each place of ``digest`` in the staging tree, whether it holds the chunk."""
        size = self.plan.sizes[digest]
        return [
            pread(self.staging / path, offset, size) == self.pkg.chunks[digest]
            for path, offset in self.plan.locations[digest]
        ]

    def blank(self, digest: Digest) -> list[bool]:
        """For each place of ``digest``, whether it still holds the layout's zeros."""
        size = self.plan.sizes[digest]
        return [
            pread(self.staging / path, offset, size) == bytes(size)
            for path, offset in self.plan.locations[digest]
        ]


def stage(home: AgentHome, pkg: Package) -> Staged:
    """Lay ``pkg`` out in ``home`` as an install does, with its chunk view (nothing landed)."""
    staging = home.staging / pkg.id
    inst = Install(pkg.id, pkg.manifest.ref, pkg.manifest.total_size)
    resumed = lay_out(home, lambda need: None, inst, pkg.manifest, staging)
    assert not resumed
    inst.view = ChunkView.of(pkg.manifest, staging, set())
    return Staged(home, pkg, inst, WritePlan(pkg.manifest), staging)


def complete(s: Staged) -> Staged:
    """Write every chunk at each of its places, as the local and fetch stages would."""
    for d, data in s.pkg.chunks.items():
        for path, offset in s.plan.locations[d]:
            with open(s.staging / path, "r+b") as f:
                f.seek(offset)
                f.write(data)
    s.have.update(s.pkg.chunks)
    s.plan.close()
    return s
