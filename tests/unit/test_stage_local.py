"""The local stages alone (agent/local_stage.py): the staging tree laid out with every file
preallocated (a disk too small fails first), then filled with every chunk found here, in a
resumed staging tree or an installed version, and only where its bytes still verify."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packdist.agent.home import AgentHome
from packdist.agent.install_record import Install
from packdist.agent.installer import Installer
from packdist.agent.local_stage import RESERVE, fill_locally, lay_out
from packdist.agent.write_plan import WritePlan, pread
from packdist.core.digest import Digest
from packdist.errors import DiskFull
from tests.fuzzing import fuzz, tried
from tests.unit.stage_rig import Staged, complete, new_home, stage
from tests.unit.test_agent_home import PIECE, Package, install, package, serve, tree_of, v


def installed(home: AgentHome, pkg: Package) -> Path:
    """Install ``pkg`` for real; the folder it is in."""
    inst = asyncio.run(install(Installer(home, serve(pkg)), pkg))
    assert inst.error is None, inst.error
    return home.package_dir(pkg.manifest.name, pkg.manifest.version)


def fill(s: Staged, resumed: bool = False) -> list[Digest]:
    try:
        return fill_locally(s.home, s.inst, s.plan, s.staging, resumed)
    finally:
        s.plan.close()


def flip(path: Path, offset: int) -> None:
    """Damage one byte of an installed file (bit rot, a stray write)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


OLD = v(1)  # lib/data.bin starts with the chunk b"\1" * PIECE five times over
SHARED = b"\1" * PIECE


def sharing(old: Package) -> Package:
    """``app@2``: the README of ``old``, the repeated chunk of ``old``, and new bytes."""
    return package(
        "app", "2", {"README": old.files["README"], "ones": SHARED, "new": os.urandom(3000)}
    )


# --- lay_out ----------------------------------------------------------------------------------


def test_lay_out_preallocates_every_file_at_its_size(tmp_path: Path) -> None:
    s = stage(new_home(tmp_path / "agent"), OLD)
    sizes = {p: len(b) for p, b in OLD.files.items()}
    assert {p: len(b) for p, b in tree_of(s.staging).items()} == sizes
    assert all(b == bytes(len(b)) for b in tree_of(s.staging).values()), "zeros, nothing else"
    assert lay_out(s.home, lambda need: None, s.inst, OLD.manifest, s.staging), "resumes"


@dataclass
class SmallDisk(AgentHome):
    """A home whose disk has ``free`` bytes free."""

    free: int = 0

    def free_bytes(self) -> int:
        return self.free


def test_lay_out_on_a_disk_too_small_fails_first_and_leaves_nothing(tmp_path: Path) -> None:
    home = SmallDisk(tmp_path / "agent", free=OLD.manifest.total_size)  # no head room
    home.prepare()
    staging = home.staging / OLD.id
    asked: list[int] = []
    inst = Install(OLD.id, OLD.manifest.ref, OLD.manifest.total_size)
    with pytest.raises(DiskFull, match=r"^disk full: need .*, have ") as caught:
        lay_out(home, asked.append, inst, OLD.manifest, staging)
    assert "\n" not in caught.value.message
    assert asked == [OLD.manifest.total_size + RESERVE], "the cache was asked to give way"
    assert list(home.staging.iterdir()) == []


def test_lay_out_fits_once_the_cache_gives_way(tmp_path: Path) -> None:
    home = SmallDisk(tmp_path / "agent", free=0)
    home.prepare()

    def trim(need: int) -> None:
        home.free = need  # evicting cached versions freed just enough

    inst = Install(OLD.id, OLD.manifest.ref, OLD.manifest.total_size)
    assert not lay_out(home, trim, inst, OLD.manifest, home.staging / OLD.id)
    assert set(tree_of(home.staging / OLD.id)) == set(OLD.files)


# --- fill_locally -----------------------------------------------------------------------------


def test_a_chunk_an_installed_version_shares_is_copied_and_only_the_rest_fetched(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path / "agent")
    installed(home, OLD)
    new = sharing(OLD)
    s = stage(home, new)
    missing = fill(s)
    readme, ones = (Digest.of(new.files[p]) for p in ("README", "ones"))
    assert all(s.holds(readme)) and all(s.holds(ones))
    assert set(missing) == set(new.chunks) - {readme, ones}
    assert all(all(s.blank(d)) for d in missing)


def test_a_chunk_whose_installed_copy_no_longer_verifies_is_never_copied(tmp_path: Path) -> None:
    home = new_home(tmp_path / "agent")
    root = installed(home, OLD)
    flip(root / "README", 0)
    new = sharing(OLD)
    s = stage(home, new)
    missing = fill(s)
    readme = Digest.of(new.files["README"])
    assert readme in missing
    assert all(s.blank(readme)), "the damaged bytes were not copied"


def test_a_damaged_copy_is_passed_over_for_one_that_still_verifies(tmp_path: Path) -> None:
    home = new_home(tmp_path / "agent")
    root = installed(home, OLD)
    flip(root / "lib/data.bin", 10)  # the first of five copies of SHARED
    s = stage(home, sharing(OLD))
    missing = fill(s)
    assert Digest.of(SHARED) not in missing
    assert all(s.holds(Digest.of(SHARED)))


def test_a_resumed_staging_tree_keeps_what_verifies_and_refills_what_does_not(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path / "agent")
    s = stage(home, OLD)
    complete(s)  # an earlier attempt got every chunk in ...
    s.plan = WritePlan(OLD.manifest)
    repeated = Digest.of(SHARED)
    readme = Digest.of(OLD.files["README"])
    flip(s.staging / "lib/data.bin", 0)  # ... then one copy of the repeated chunk rotted,
    flip(s.staging / "README", 0)  # ... and the only copy of the README
    missing = fill(s, resumed=True)
    assert missing == [readme]
    assert all(s.holds(repeated)), "refilled from its other copies in the staging tree"


# --- any damage -------------------------------------------------------------------------------


@fuzz(20)
@given(st.lists(st.integers(0, len(OLD.files["lib/data.bin"]) - 1), max_size=12))
def test_whatever_bytes_rot_only_chunks_that_verify_are_copied(
    tmp_path_factory: pytest.TempPathFactory, rotten: list[int]
) -> None:
    """Bytes of an installed file damaged anywhere: a chunk of the new version is copied
    exactly when one of its installed copies is intact, and then at every place."""
    tried("local stage: installed trees damaged anywhere")
    home = new_home(tmp_path_factory.mktemp("local") / "agent")
    root = installed(home, OLD)
    for offset in set(rotten):
        flip(root / "lib/data.bin", offset)
    new = package("app", "2", {"copy": OLD.files["lib/data.bin"]})
    s = stage(home, new)
    missing = set(fill(s))
    for d in new.chunks:
        intact = any(
            pread(root / "lib/data.bin", offset, s.plan.sizes[d]) == new.chunks[d]
            for _, offset in s.plan.locations[d]  # "copy" is laid out as data.bin is
        )
        if intact:
            assert d not in missing and all(s.holds(d))
        else:
            assert d in missing and all(s.blank(d))
