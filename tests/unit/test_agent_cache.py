"""The agent's chunk cache: removing a version moves it to ``cache/<id>``, later installs take
chunks (or the whole tree) from it, and the cache stays within its limit, least recently
used first, never touching the staging tree of an install that is running."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from packdist.agent.home import AgentHome, tree_bytes
from packdist.agent.installer import RESERVE, Installer, InstallState
from tests.unit.test_agent_home import install, no_fetch, package, serve, tree_of, v

KIB = 1024


@pytest.fixture
def home(tmp_path: Path) -> AgentHome:
    h = AgentHome(tmp_path / "agent")
    h.prepare()
    return h


def fake_tree(parent: Path, name: str, size: int, used: float) -> Path:
    """A cache tree of ``size`` random bytes whose last use is ``used`` (a Unix time)."""
    root = parent / name
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.bin").write_bytes(os.urandom(size))
    os.utime(root, (used, used))
    return root


def pid(n: int) -> str:
    return f"{n:064x}"


def test_trim_keeps_the_limit_least_recently_used_first_never_a_running_install(
    home: AgentHome,
) -> None:
    now = time.time()
    oldest_running = fake_tree(home.staging, pid(1), 100 * KIB, now - 5000)  # install running
    old_cached = fake_tree(home.cache, pid(2), 100 * KIB, now - 4000)
    (home.manifests / pid(2)).write_bytes(b"manifest of a removed version")
    mid_staging = fake_tree(home.staging, pid(3), 100 * KIB, now - 3000)  # interrupted
    new_cached = fake_tree(home.cache, pid(4), 100 * KIB, now - 10)
    entries = home.cache_entries()
    assert [e.package_id for e in entries] == [pid(1), pid(2), pid(3), pid(4)]
    assert all(e.size >= 100 * KIB for e in entries)
    one = entries[0].size

    # room for one and a half removed versions: the older one goes. Staging trees are not
    # held to the limit: an unfinished install is work the site still wants, and its next
    # attempt resumes from it (only a need for disk space evicts one)
    home.cache_limit = one + one // 2
    freed = home.trim_cache(busy=frozenset({pid(1)}))

    assert not old_cached.exists()  # the least recently used removed version went
    assert new_cached.exists()
    assert mid_staging.exists(), "an interrupted install keeps what it received"
    assert oldest_running.exists()  # older still, and its install is running
    assert freed >= 100 * KIB
    assert not (home.manifests / pid(2)).exists()  # an evicted version's manifest goes too
    kept = [e for e in home.cache_entries() if e.kind == "cached"]
    assert sum(e.size for e in kept) <= home.cache_limit
    assert home.trim_cache(busy=frozenset({pid(1)})) == 0  # within the limit: nothing more


def test_a_staging_tree_being_renamed_into_place_is_never_evicted(home: AgentHome) -> None:
    fake_tree(home.staging, pid(7), 10 * KIB, time.time() - 100)
    (home.staging / f"{pid(7)}.swap").write_text("{}")  # the journal of a rename into place
    home.cache_limit = 0
    assert home.trim_cache() == 0
    assert (home.staging / pid(7)).exists()


def test_remove_keeps_the_version_in_the_cache_and_a_reinstall_fetches_nothing(
    home: AgentHome,
) -> None:
    pkg = v(1)
    asyncio.run(install(Installer(home, serve(pkg)), pkg))
    tree = home.package_dir("app", "1")
    assert home.remove_version("app@1", pkg.id) == "removed"
    assert not tree.exists() and not tree.parent.exists()
    assert home.installed() == {}
    assert tree_of(home.cache / pkg.id) == pkg.files
    assert home.remove_version("app@1", pkg.id) == "absent"  # idempotent

    again = asyncio.run(install(Installer(home, no_fetch), pkg))
    assert again.state is InstallState.INSTALLED, again.error
    assert tree_of(tree) == pkg.files
    assert home.installed() == {"app@1": pkg.id}
    assert not (home.cache / pkg.id).exists()  # taken back, not copied


def test_a_cached_version_lends_its_chunks_to_another_version(home: AgentHome) -> None:
    shared = os.urandom(30_000)
    old = package("app", "1", {"big.bin": shared, "v": b"1"})
    new = package("app", "2", {"big.bin": shared, "v": b"2"})
    asyncio.run(install(Installer(home, serve(old)), old))
    home.remove_version("app@1", old.id)
    os.utime(home.cache / old.id, (1, 1))  # long unused
    calls: list[int] = []
    inst = asyncio.run(install(Installer(home, serve(new, calls=calls)), new))
    assert inst.state is InstallState.INSTALLED, inst.error
    assert tree_of(home.package_dir("app", "2")) == new.files
    assert sum(calls) == 1  # only the chunk of "v"
    assert (home.cache / old.id).stat().st_mtime > time.time() - 60  # stamped as used


def test_with_a_limit_of_zero_removal_frees_the_disk(home: AgentHome) -> None:
    pkg = v(2)
    installer = Installer(home, serve(pkg))
    asyncio.run(install(installer, pkg))
    home.cache_limit = 0
    home.remove_version("app@1", pkg.id)
    installer.trim_cache()
    assert list(home.cache.iterdir()) == []
    assert home.load_manifest(pkg.id) is None


def _disk(home: AgentHome, monkeypatch: pytest.MonkeyPatch, capacity: int) -> None:
    """Pretend the disk holds ``capacity`` bytes of which the home's trees take their size."""
    monkeypatch.setattr(AgentHome, "free_bytes", lambda self: capacity - tree_bytes(self.root))


def test_an_install_that_fits_only_without_the_cache_evicts_it_first(
    home: AgentHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = fake_tree(home.cache, pid(9), 200 * KIB, time.time() - 100)
    pkg = v(3)
    _disk(home, monkeypatch, tree_bytes(home.root) + RESERVE + pkg.manifest.total_size - KIB)
    inst = asyncio.run(install(Installer(home, serve(pkg)), pkg))
    assert inst.state is InstallState.INSTALLED, inst.error
    assert not cached.exists()


def test_disk_full_keeps_the_cache_when_evicting_it_would_not_help(
    home: AgentHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = fake_tree(home.cache, pid(9), 20 * KIB, time.time() - 100)
    pkg = v(4)
    _disk(home, monkeypatch, tree_bytes(home.root) + RESERVE // 2)
    inst = asyncio.run(install(Installer(home, serve(pkg)), pkg))
    assert inst.state is InstallState.FAILED
    assert inst.error is not None and inst.error.startswith("disk full: need")
    assert cached.exists()
