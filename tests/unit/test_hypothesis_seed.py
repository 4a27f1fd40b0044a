"""Hypothesis draws fresh examples in every session, CI included, and a printed seed
replays them (tests/conftest.py). Each check runs a small property test in a pytest of its
own, with this suite's conftest, as CI does (``CI=true``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROPERTY = """
import os
from hypothesis import given, settings, strategies as st

@settings(max_examples=5, database=None)
@given(st.integers())
def test_draw(n):
    with open(os.environ["DRAWN"], "a") as out:
        out.write(f"{n}\\n")
"""


def session(tmp_path: Path, name: str, seed: str | None = None) -> tuple[list[str], str]:
    """Run the property once; what it drew, and the output."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (folder / "test_property.py").write_text(PROPERTY)
    drawn = folder / "drawn.txt"
    env = {k: v for k, v in os.environ.items() if k != "PACKDIST_HYPOTHESIS_SEED"}
    env.update({"CI": "true", "DRAWN": str(drawn), "PYTHONPATH": str(ROOT)})
    if seed is not None:
        env["PACKDIST_HYPOTHESIS_SEED"] = seed
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*pytest, "--rootdir", str(folder), str(folder / "test_property.py")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return drawn.read_text().split(), proc.stdout


def test_each_ci_session_draws_new_examples_and_prints_its_seed(tmp_path: Path) -> None:
    first, out = session(tmp_path, "first")
    second, _ = session(tmp_path, "second")
    assert first != second, "two CI sessions drew the same examples"
    assert re.search(r"hypothesis seed: \d+ \(PACKDIST_HYPOTHESIS_SEED=\d+ replays it\)", out)


def test_the_printed_seed_replays_the_same_examples(tmp_path: Path) -> None:
    first, out = session(tmp_path, "first")
    match = re.search(r"PACKDIST_HYPOTHESIS_SEED=(\d+)", out)
    assert match is not None, out
    again, _ = session(tmp_path, "again", seed=match.group(1))
    assert again == first
