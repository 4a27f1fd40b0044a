"""Shared fixtures for every test tier."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import pgcluster
from tests.pgcluster import Cluster

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


# --- PostgreSQL: one throwaway cluster per test session ----------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of this session's own (skipped, with the reason, where it cannot
    be started)."""
    why = pgcluster.missing_reason()
    if why:
        pytest.skip(f"PostgreSQL tier skipped: {why}")
    cluster = Cluster()
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        cluster.stop()
        pytest.skip(f"PostgreSQL tier skipped: the cluster did not start: {exc.stderr!r}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A URL of an empty database of the session's cluster, for this test alone."""
    return pg_cluster.new_database()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The examples each fuzz surface tried (see tests/fuzzing.py)."""
    from tests.fuzzing import TRIED

    if TRIED:
        terminalreporter.section("fuzz examples tried")
        for surface, count in sorted(TRIED.items()):
            terminalreporter.write_line(f"{count:8d}  {surface}")


# --- hypothesis: fresh examples on every run, and the seed to replay them ----------------
# Hypothesis's built-in "ci" profile (loaded when CI is set) is derandomized: every CI run
# would replay the same examples. Ours draws new ones in each session from one seed, shown
# in the header, so a failure found anywhere replays with PACKDIST_HYPOTHESIS_SEED=N.

HYPOTHESIS_SEED_ENV = "PACKDIST_HYPOTHESIS_SEED"


def _load_hypothesis_profile() -> int:
    """Load the "packdist" profile (the "ci" one, randomized, under CI) and return this
    session's seed."""
    import random

    from hypothesis import settings

    under_ci = settings.get_current_profile_name() == "ci"
    settings.register_profile(
        "packdist",
        parent=settings.get_profile("ci") if under_ci else None,
        derandomize=False,  # else hypothesis ignores the seed and replays fixed examples
        print_blob=True,
        **({"database": None} if under_ci else {}),  # a fresh clone has nothing to replay
    )
    settings.load_profile("packdist")
    raw = os.environ.get(HYPOTHESIS_SEED_ENV, "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


HYPOTHESIS_SEED = _load_hypothesis_profile()


class _HypothesisSeedReport:
    """The seed line: in the header, and (the header is hidden under ``-q``, as in
    ``make test``) again in the closing summary."""

    def __init__(self, seed: str) -> None:
        self.line = f"hypothesis seed: {seed} ({HYPOTHESIS_SEED_ENV}={seed} replays it)"

    def pytest_report_header(self) -> str:
        return self.line

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_line(self.line)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # hypothesis's pytest plugin reads the option in its own pytest_configure, after this
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(HYPOTHESIS_SEED)
    report = _HypothesisSeedReport(config.option.hypothesis_seed)
    config.pluginmanager.register(report, "packdist-hypothesis-seed")
