"""The rule for a test tier that cannot run here (tests/conftest.py ``require``): skipped with
its reason on a workstation, failed with it under ``CI=true``: a CI run never passes by
silently leaving a tier out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIER_TEST = """
from tests.conftest import require


def test_needs_a_database_server() -> None:
    require("postgres", "no PostgreSQL server answers on 127.0.0.1:5432")
"""


def run_tier_test(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_tier.py").write_text(TIER_TEST)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_tier.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_tier_that_cannot_run_is_skipped_with_its_reason(tmp_path: Path) -> None:
    proc = run_tier_test(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout
    assert "postgres tier skipped: no PostgreSQL server answers" in proc.stdout  # -rs


def test_a_tier_that_cannot_run_fails_the_run_under_ci(tmp_path: Path) -> None:
    proc = run_tier_test(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    assert "1 failed" in proc.stdout
    assert "postgres tier cannot run under CI=true: no PostgreSQL server answers" in proc.stdout
