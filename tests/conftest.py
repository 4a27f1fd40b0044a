"""Shared fixtures for every test tier, and the rule for a tier that cannot run here.

A tier that needs something this machine lacks (root and network namespaces for the lab,
Chromium for the browser test, PostgreSQL for the PostgreSQL store) calls
:func:`require`: the tests are skipped with the reason (``make test`` prints it, ``-rs``),
and under ``CI=true`` they fail with it instead, so a CI run never passes by silently
leaving a tier out.
"""

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


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(tier: str, why_not: str | None) -> None:
    """Let the calling test (or fixture) run only if ``why_not`` is None; else skip it
    saying why, or fail it under ``CI=true``. ``tier`` names what cannot run: "lab",
    "browser", "postgres"."""
    if why_not is None:
        return
    if in_ci():
        pytest.fail(f"{tier} tier cannot run under CI=true: {why_not}", pytrace=False)
    pytest.skip(f"{tier} tier skipped: {why_not}")


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
    be started; failed under CI=true)."""
    require("postgres", pgcluster.missing_reason())
    cluster = Cluster()
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        cluster.stop()
        require("postgres", f"the cluster did not start: {exc.stderr!r}")
    yield cluster
    cluster.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The examples each fuzz surface tried (see tests/fuzzing.py)."""
    from tests.fuzzing import TRIED

    if TRIED:
        terminalreporter.section("fuzz examples tried")
        for surface, count in sorted(TRIED.items()):
            terminalreporter.write_line(f"{count:8d}  {surface}")


def _empty_basetemp(config: pytest.Config) -> None:
    """Empty ``--basetemp`` (``make test`` gives one in the checkout) without recursion
    before pytest does: its own removal fails on a tree deeper than Python's recursion limit,
    which the deep-tree tests make (and a test killed mid-way leaves behind)."""
    basetemp = config.getoption("basetemp", None)
    if basetemp:
        from packdist.core.fsutil import remove_tree

        remove_tree(Path(basetemp))


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
    _empty_basetemp(config)
    # hypothesis's pytest plugin reads the option in its own pytest_configure, after this
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(HYPOTHESIS_SEED)
    report = _HypothesisSeedReport(config.option.hypothesis_seed)
    config.pluginmanager.register(report, "packdist-hypothesis-seed")
