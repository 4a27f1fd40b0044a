"""``python -m bench import``'s table and verdicts, from made-up runs (no tree, no tools)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import Run, Tally
from bench.import_bench import METHODS, Method, available, report

GIB = 1024**3


def _tallies(seconds: dict[str, float]) -> dict[str, Tally]:
    out = {}
    for m in METHODS:
        t = Tally(m.name)
        if m.name in seconds:
            t.runs.append(Run(seconds[m.name], 100 * 1024, 1.0, 0.5))
        out[m.name] = t
    return out


def _row(table: str, method: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(method))
    return line[len(method) :].split()


def test_the_table_sets_packdist_beside_cp_sync_and_the_fastest_chunk_store() -> None:
    seconds = {
        "packdist package create": 2.0,
        "cp -r": 0.5,
        "cp -r + sync": 1.5,
        "tar | zstd -1 -T1": 2.5,
        "restic backup": 8.0,
        "casync make": 10.0,
    }
    table = report(GIB, METHODS, _tallies(seconds))

    assert "vs fastest chunk store" in table.splitlines()[0]
    assert _row(table, "packdist package create")[-3:] == ["0.25", "0.75", "4.00"]
    assert _row(table, "casync make")[-1] == "0.80"  # restic is the fastest chunk store here
    assert "speed 0.75 x cp -r + sync (goal >= 0.8): NOT met" in table
    assert "speed 4.00 x restic backup, the fastest chunk store (goal >= 1.5): met" in table


def test_a_chunk_store_that_did_not_run_is_left_out_of_the_table_and_the_verdicts() -> None:
    seconds = {"packdist package create": 2.0, "cp -r + sync": 1.5, "casync make": 2.5}
    table = report(GIB, METHODS, _tallies(seconds))

    assert not any(line.startswith("restic") for line in table.splitlines())
    assert "speed 1.25 x casync make, the fastest chunk store (goal >= 1.5): NOT met" in table


def test_a_method_whose_tool_is_missing_is_skipped_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = Method("nosuch store", lambda s, o: Run(0, 0, 0, 0), "no", tool="packdist-nosuch")
    kept = available([METHODS[0], missing])

    assert kept == [METHODS[0]]
    out = capsys.readouterr().out
    assert "skipping nosuch store: packdist-nosuch is not installed" in out
