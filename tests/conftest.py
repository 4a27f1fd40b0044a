"""Shared fixtures for every test tier."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

PACKDIST = [sys.executable, "-m", "packdist"]


def run_packdist(
    home: Path,
    *args: str,
    check: bool = True,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``packdist`` command in a subprocess with ``--home``."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PACKDIST_HOME", None)
    proc = subprocess.run(
        [*PACKDIST, "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"packdist {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def packdist() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_packdist


@pytest.fixture
def site_home(tmp_path: Path) -> Path:
    home = tmp_path / "site"
    run_packdist(home, "site", "init", "--name", "testsite")
    return home


def have_root_and_netns() -> str | None:
    """Why lab tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, veth, tc); run as root to include them"
    if shutil.which("ip") is None:
        return "lab tests need iproute2's 'ip' command"
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The examples each fuzz surface tried (see tests/fuzzing.py)."""
    from tests.fuzzing import TRIED

    if TRIED:
        terminalreporter.section("fuzz examples tried")
        for surface, count in sorted(TRIED.items()):
            terminalreporter.write_line(f"{count:8d}  {surface}")
