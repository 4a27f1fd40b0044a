"""Validation of installed trees on the agent, and the repair install that mends them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from packdist.agent.home import AgentHome
from packdist.agent.installer import Installer, InstallState
from packdist.agent.signers import TrustedSigners
from packdist.agent.validation import validate_installed
from tests.unit.test_agent_home import (
    KEY,
    Package,
    install,
    serve,
    tree_of,
    v,
)


@pytest.fixture
def home(tmp_path: Path) -> AgentHome:
    h = AgentHome(tmp_path / "agent")
    h.prepare()
    return h


def _installed(home: AgentHome, n: int = 1) -> tuple[Installer, Package]:
    pkg = v(n)
    installer = Installer(home, serve(pkg))
    inst = asyncio.run(install(installer, pkg))
    assert inst.state is InstallState.INSTALLED, inst.error
    return installer, pkg


def test_intact_tree_validates_ok(home: AgentHome) -> None:
    _, pkg = _installed(home)
    [result] = validate_installed(home)
    assert result == {"package_id": pkg.id, "package": "app@1", "ok": True, "problems": []}


def test_altered_missing_and_retyped_entries_are_named(home: AgentHome) -> None:
    _installed(home)
    root = home.package_dir("app", "1")
    data = bytearray((root / "lib" / "data.bin").read_bytes())
    data[12_345] ^= 0xFF  # one flipped byte, same size
    (root / "lib" / "data.bin").write_bytes(bytes(data))
    (root / "README").unlink()
    [result] = validate_installed(home)
    assert not result["ok"]
    assert sorted((p["path"], p["problem"]) for p in result["problems"]) == [
        ("README", "missing"),
        ("lib/data.bin", "altered"),
    ]
    (root / "README").mkdir()
    (root / "lib" / "data.bin").chmod(0o755)
    problems = {p["path"]: p["problem"] for p in validate_installed(home)[0]["problems"]}
    assert problems["README"] == "type changed"
    # a truncated file is altered too
    with open(root / "lib" / "data.bin", "r+b") as f:
        f.truncate(100)
    problems = {p["path"]: p["problem"] for p in validate_installed(home)[0]["problems"]}
    assert problems["lib/data.bin"] == "altered"


def test_only_the_asked_and_not_busy_packages_are_validated(home: AgentHome) -> None:
    _, pkg = _installed(home)
    assert validate_installed(home, ["0" * 64]) == []
    assert len(validate_installed(home, [pkg.id])) == 1
    assert validate_installed(home, None, skip={pkg.id}) == []


def test_repair_fetches_only_damaged_chunks_and_restores_the_tree(home: AgentHome) -> None:
    installer, pkg = _installed(home)
    root = home.package_dir("app", "1")
    data = bytearray((root / "lib" / "data.bin").read_bytes())
    data[12_345] ^= 0xFF
    (root / "lib" / "data.bin").write_bytes(bytes(data))
    (root / "README").unlink()
    calls: list[int] = []
    installer._fetch = serve(pkg, calls=calls)

    async def go() -> None:
        # without repair: installed is installed, nothing happens
        plain = await installer.start(
            pkg.manifest.canonical(),
            pkg.signed.signature,
            TrustedSigners(KEY.public),
        )
        assert plain.state is InstallState.INSTALLED and not calls
        inst = await installer.start(
            pkg.manifest.canonical(),
            pkg.signed.signature,
            TrustedSigners(KEY.public),
            repair=True,
        )
        await inst.finished.wait()
        assert inst.state is InstallState.INSTALLED, inst.error
        assert inst.bytes_received == 1000 + len(pkg.files["README"])

    asyncio.run(go())
    assert sum(calls) == 2  # one chunk of data.bin, the one chunk of README
    assert tree_of(root) == pkg.files
    assert validate_installed(home)[0]["ok"]
    assert home.installed() == {"app@1": pkg.id}
    assert [p.name for p in home.staging.iterdir()] == []
    assert not os.access(root / "lib" / "data.bin", os.X_OK)


def test_missing_manifest_is_reported(home: AgentHome, tmp_path: Path) -> None:
    _, pkg = _installed(home)
    (home.manifests / pkg.id).unlink()
    [result] = validate_installed(home)
    assert result["problems"] == [{"path": ".", "problem": "manifest missing"}]


def test_entries_added_inside_an_installed_tree_are_named(home: AgentHome) -> None:
    _installed(home)
    root = home.package_dir("app", "1")
    (root / "lib" / "dropped.so").write_bytes(b"\x7fELF")
    (root / "new-dir" / "deep").mkdir(parents=True)
    (root / "new-dir" / "deep" / "x").write_text("x")
    (root / "lib" / "sneaky").symlink_to("../README")
    (root / os.fsdecode(b"bad-\xff-name")).write_text("?")
    [result] = validate_installed(home)
    assert not result["ok"]
    assert [(p["path"], p["problem"]) for p in result["problems"]] == [
        ("bad-\\xff-name", "added"),
        ("lib/dropped.so", "added"),
        ("lib/sneaky", "added"),
        ("new-dir", "added"),  # once, not what is inside
    ]
    for extra in ("lib/dropped.so", "lib/sneaky", os.fsdecode(b"bad-\xff-name")):
        (root / extra).unlink()
    (root / "new-dir" / "deep" / "x").unlink()
    (root / "new-dir" / "deep").rmdir()
    (root / "new-dir").rmdir()
    assert validate_installed(home)[0]["ok"]


def test_an_added_file_is_taken_away_by_a_repair(home: AgentHome) -> None:
    installer, pkg = _installed(home)
    root = home.package_dir("app", "1")
    (root / "lib" / "dropped.so").write_bytes(b"\x7fELF")
    assert not validate_installed(home)[0]["ok"]

    async def repair() -> InstallState:
        inst = await installer.start(
            pkg.manifest.canonical(), pkg.signed.signature, TrustedSigners(KEY.public), repair=True
        )
        await inst.finished.wait()
        return inst.state

    assert asyncio.run(repair()) is InstallState.INSTALLED
    assert not (root / "lib" / "dropped.so").exists()
    assert validate_installed(home)[0]["ok"]
