"""How removal jobs read: matrix cells whose newest job is a removal, the job document, the
dashboard's job block and the CLI's job table."""

from __future__ import annotations

from rich.console import Console

from packdist.cli.job_view import _job_table, _plain_line
from packdist.site.job_docs import job_json
from packdist.site.pages import job_block
from packdist.site.views import cell_view
from packdist.states import InstructionState, JobState
from packdist.store.base import InstructionRecord, JobRecord
from tests.unit.test_views import NOW, cell

S = InstructionState


def removal_job(*states: InstructionState, error: str | None = None) -> JobRecord:
    instructions = tuple(
        InstructionRecord(n, "j9", f"dp{n}", st, 1, error, NOW + 5, 0, 0, NOW, None)
        for n, st in enumerate(states, 1)
    )
    return JobRecord("j9", "ab" * 32, "app@1.0", NOW, None, None, {}, instructions, action="remove")


def test_a_removed_copy_leaves_the_matrix_cell_empty() -> None:
    view = cell_view(cell(S.REMOVED, action="remove"), NOW)
    assert (view["word"], view["detail"], view["state"]) == ("-", "removed", "removed")


def test_a_removal_under_way_says_removing_and_why() -> None:
    view = cell_view(
        cell(S.RETRYING, installed=True, error="connection refused by x", action="remove"), NOW
    )
    assert view["word"] == "removing"
    assert view["detail"] == "removal retrying; connection refused by x; next attempt in 5s"
    assert cell_view(cell(S.PENDING, installed=True, action="remove"), NOW)["word"] == "removing"


def test_a_failed_or_cancelled_removal_shows_what_the_server_holds() -> None:
    failed = cell_view(cell(S.FAILED, installed=True, error="boom", action="remove"), NOW)
    assert (failed["word"], failed["detail"]) == ("failed", "removal failed: boom")
    kept = cell_view(cell(S.CANCELLED, installed=True, action="remove"), NOW)
    assert kept["word"] == "installed"
    assert cell_view(cell(S.CANCELLED, action="remove"), NOW)["word"] == "-"


def test_a_removal_job_reads_as_one() -> None:
    job = removal_job(S.REMOVED, S.RETRYING, error="connection refused by x")
    doc = job_json(job)
    assert doc["action"] == "remove" and doc["state"] == "active"
    assert removal_job(S.REMOVED, S.REMOVED).state is JobState.SUCCEEDED
    html = job_block(doc, NOW)
    assert 'data-action="remove"' in html and "remove app@1.0" in html
    assert "1/2 removed" in html and "<progress" not in html
    console = Console(width=100, record=True)
    console.print(_job_table(job, NOW))
    text = console.export_text()
    assert "remove app@1.0" in text and "1/2 removed" in text and "progress" not in text
    assert _plain_line(job).startswith("removal job j9 active: dp1=removed, dp2=retrying")
