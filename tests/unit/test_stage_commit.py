"""The commit stage alone (agent/commit_stage.py): a complete staged tree put in place in
one rename or one atomic exchange, journalled; and start-up recovery after a crash at any
step of it, which leaves the old tree or the new one in place, whole, never a mix."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from packdist.agent import commit_stage
from packdist.agent.commit_stage import STAGING_TTL, journal_of, put_in_place, recover
from packdist.agent.home import AgentHome
from packdist.agent.install_record import Install
from packdist.agent.write_plan import WritePlan
from packdist.core.chunking import DEFAULT_PARAMS
from packdist.core.manifest import Entry, EntryType, Manifest, SignedManifest
from tests.unit.stage_rig import Staged, complete, new_home, stage
from tests.unit.test_agent_home import KEY, Crash, Package, package, tree_of, v

OLD, NEW = v(1), v(2)  # two versions of app@1


def staged_complete(home: AgentHome, pkg: Package) -> Staged:
    return complete(stage(home, pkg))


def commit(s: Staged) -> None:
    put_in_place(s.home, s.inst, s.pkg.manifest, s.staging)


def in_place(home: AgentHome) -> dict[str, bytes] | None:
    final = home.package_dir("app", "1")
    return tree_of(final) if final.exists() else None


# --- putting in place -------------------------------------------------------------------------


def with_modes() -> Package:
    """A package with an executable file, a symlink to it, and set times."""
    base = package("app", "1", {"bin/run": b"#!/bin/sh\necho hi\n", "data": b"x" * 3000})
    entries = [
        Entry(e.path, e.type, e.size, e.path == "bin/run", 1_600_000_000 * 10**9, e.chunks)
        if e.type is EntryType.FILE
        else e
        for e in base.manifest.entries
    ]
    entries.append(Entry("run", EntryType.SYMLINK, target="bin/run"))
    m = Manifest.build("app", "1", entries, DEFAULT_PARAMS)
    return Package(SignedManifest.sign(m, KEY), base.chunks, base.files)


def test_a_tree_put_in_place_has_its_modes_times_and_symlinks_and_is_recorded(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path / "agent")
    pkg = with_modes()
    s = staged_complete(home, pkg)
    commit(s)
    final = home.package_dir("app", "1")
    assert stat.S_IMODE((final / "bin/run").stat().st_mode) == 0o755
    assert stat.S_IMODE((final / "data").stat().st_mode) == 0o644
    assert (final / "data").stat().st_mtime_ns == 1_600_000_000 * 10**9
    assert os.readlink(final / "run") == "bin/run"
    assert (final / "run").read_bytes() == pkg.files["bin/run"]
    assert home.installed() == {"app@1": pkg.id}
    assert home.load_manifest(pkg.id) == pkg.manifest.canonical()
    assert list(home.staging.iterdir()) == [], "no staging tree, no journal"
    assert s.inst.view is not None and s.inst.view.root == final, "peers read from there now"


def test_a_tree_already_in_place_is_exchanged_whole_and_then_dropped(tmp_path: Path) -> None:
    home = new_home(tmp_path / "agent")
    commit(staged_complete(home, OLD))
    old_inode = home.package_dir("app", "1").stat().st_ino
    new = staged_complete(home, NEW)
    new_inode = new.staging.stat().st_ino
    commit(new)
    assert home.package_dir("app", "1").stat().st_ino == new_inode != old_inode
    assert in_place(home) == NEW.files
    assert home.installed() == {"app@1": NEW.id}
    assert list(home.staging.iterdir()) == []


# --- a crash at any step ----------------------------------------------------------------------


@dataclass
class Dies(AgentHome):
    """A home whose process dies before or after recording an install."""

    when: str = ""

    def record_installed(self, ref: str, package_id: str) -> None:
        if self.when == "before":
            raise Crash
        super().record_installed(ref, package_id)
        if self.when == "after":
            raise Crash


def dying(real: Any, when: str, only: Any = None) -> Any:
    """``real``, but the process dies just before or just after it runs (for ``only``'s
    first argument, if given)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if only is not None and Path(args[0]) != only:
            return real(*args, **kwargs)
        if when == "before":
            raise Crash
        out = real(*args, **kwargs)
        raise Crash
        return out  # pragma: no cover

    return call


STEPS = [
    ("syncfs", "before"),
    ("write_atomic", "before"),  # the journal
    ("write_atomic", "after"),  # journal written, nothing moved: between journal and rename
    ("move", "before"),  # the same instant, seen from the move
    ("move", "after"),  # moved, not yet recorded
    ("fsync_dir", "after"),
    ("record_installed", "before"),
    ("record_installed", "after"),  # recorded, journal still there
]


@pytest.mark.parametrize("replacing", [True, False], ids=["replacing", "first"])
@pytest.mark.parametrize(("step", "when"), STEPS, ids=[f"{w} {s}" for s, w in STEPS])
def test_a_crash_at_any_step_leaves_the_old_tree_or_the_new_never_a_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replacing: bool, step: str, when: str
) -> None:
    root = tmp_path / "agent"
    home = new_home(root)
    if replacing:
        commit(staged_complete(home, OLD))
    s = staged_complete(Dies(root, when=when if step == "record_installed" else ""), NEW)
    with monkeypatch.context() as m:
        if step == "move" and replacing:
            m.setattr(commit_stage, "exchange", dying(commit_stage.exchange, when))
        elif step == "move":
            m.setattr(os, "rename", dying(os.rename, when, only=s.staging))
        elif step != "record_installed":
            m.setattr(commit_stage, step, dying(getattr(commit_stage, step), when))
        with pytest.raises(Crash):
            commit(s)

    restarted = AgentHome(root)  # the agent starts again
    recover(restarted)
    there = in_place(restarted)
    assert there in (OLD.files if replacing else None, NEW.files), "a mix of two versions"
    recorded = restarted.installed().get("app@1")
    left = sorted(p.name for p in restarted.staging.iterdir())
    if there == NEW.files:
        assert recorded == NEW.id
        assert left == [], "the replaced tree is dropped once its successor is recorded"
    else:
        assert recorded == (OLD.id if replacing else None)
        assert left == [NEW.id], "the new tree is kept, whole, to finish without a fetch"
        assert tree_of(restarted.staging / NEW.id) == NEW.files
        again = stage_again(restarted, NEW)
        commit(again)
        assert in_place(restarted) == NEW.files
        assert restarted.installed() == {"app@1": NEW.id}


def stage_again(home: AgentHome, pkg: Package) -> Staged:
    """The kept staging tree of ``pkg`` as the next attempt finds it."""
    staging = home.staging / pkg.id
    return Staged(home, pkg, Install(pkg.id, pkg.manifest.ref, 0), WritePlan(pkg.manifest), staging)


def test_an_unreadable_journal_keeps_the_installed_tree_and_drops_the_staged_one(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path / "agent")
    commit(staged_complete(home, OLD))
    staged_complete(home, NEW)
    journal_of(home, NEW.id).write_bytes(b"{not json")
    recover(home)
    assert in_place(home) == OLD.files
    assert home.installed() == {"app@1": OLD.id}
    assert list(home.staging.iterdir()) == []


def test_a_journal_naming_another_tree_moves_nothing(tmp_path: Path) -> None:
    """A journal whose inode is not the one in place: the rename never happened."""
    home = new_home(tmp_path / "agent")
    commit(staged_complete(home, OLD))
    staged_complete(home, NEW)
    st = (home.staging / NEW.id).stat()
    info = {"ref": "app@1", "dev": st.st_dev, "ino": st.st_ino}
    journal_of(home, NEW.id).write_text(json.dumps(info))
    recover(home)
    assert in_place(home) == OLD.files and home.installed() == {"app@1": OLD.id}
    assert [p.name for p in home.staging.iterdir()] == [NEW.id]


# --- what recovery drops ----------------------------------------------------------------------


def test_recovery_drops_a_tree_abandoned_for_a_week_and_one_already_installed(
    tmp_path: Path,
) -> None:
    home = new_home(tmp_path / "agent")
    commit(staged_complete(home, OLD))
    (home.staging / OLD.id).mkdir()  # a staging tree of the version now installed
    abandoned = home.staging / ("d" * 64)
    abandoned.mkdir()
    week_ago = time.time() - STAGING_TTL - 60
    os.utime(abandoned, (week_ago, week_ago))
    recent = home.staging / ("e" * 64)
    recent.mkdir()
    recover(home)
    assert [p.name for p in home.staging.iterdir()] == [recent.name]
    assert in_place(home) == OLD.files
