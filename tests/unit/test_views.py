"""What operators read: the word and reason of a matrix cell, Prometheus text, and the rate
shown by ``job wait``."""

from __future__ import annotations

from packdist.cli.job_view import RateMeter
from packdist.site import metrics
from packdist.site.views import cell_view, is_corruption
from packdist.states import InstructionState
from packdist.store.base import (
    InstructionRecord,
    JobRecord,
    MetricsTotals,
    ServerRecord,
    StatusCell,
)

S = InstructionState
NOW = 10_000.0


def cell(
    state: S | None, installed: bool = False, error: str | None = None, **kw: object
) -> StatusCell:
    base: dict[str, object] = {
        "package_ref": "app@1.0",
        "package_id": "ab" * 32,
        "server": "dp1",
        "installed": installed,
        "state": state,
        "job_id": "j1",
        "attempts": 2,
        "last_error": error,
        "next_attempt_at": NOW + 5,
        "bytes_sent": 25,
        "bytes_total": 100,
        "updated_at": NOW,
    }
    base.update(kw)
    return StatusCell(**base)  # type: ignore[arg-type]


def test_cell_words_and_reasons() -> None:
    assert cell_view(None, NOW)["word"] == "-"
    assert cell_view(cell(S.INSTALLED, installed=True), NOW)["word"] == "installed"
    assert cell_view(cell(S.PENDING), NOW)["word"] == "in progress"
    sending = cell_view(cell(S.SENDING), NOW)
    assert sending["word"] == "in progress" and sending["detail"] == "sending, 25%, attempt 2"
    again = cell_view(cell(S.SENDING, error="connection refused"), NOW)
    assert again["detail"] == "sending, 25%, attempt 2; last error: connection refused"
    retrying = cell_view(cell(S.RETRYING, error="connection refused by http://x:1"), NOW)
    assert retrying["word"] == "retrying"
    assert retrying["detail"] == "connection refused by http://x:1; next attempt in 5s"
    due = cell_view(cell(S.RETRYING, error="e", next_attempt_at=NOW - 1), NOW)
    assert due["detail"] == "e; retry due now"
    failed = cell_view(cell(S.FAILED, error="disk full (gave up after 3 attempts)"), NOW)
    assert failed["word"] == "failed" and "disk full" in failed["detail"]
    assert cell_view(cell(S.CANCELLED), NOW)["word"] == "cancelled"
    # a server that holds the package stays installed while a newer job is under way
    assert cell_view(cell(S.PENDING, installed=True), NOW)["word"] == "installed"


def test_content_that_does_not_match_its_digest_reads_corrupt_by_its_kind() -> None:
    bad = "hash mismatch in chunk ab12…: content hashes to cd34…"
    assert is_corruption("integrity")
    assert not is_corruption("transient")
    assert not is_corruption(None)
    assert cell_view(cell(S.RETRYING, error=bad, error_kind="integrity"), NOW)["word"] == "corrupt"
    assert cell_view(cell(S.FAILED, error=bad, error_kind="integrity"), NOW)["word"] == "corrupt"
    # the words alone decide nothing: a transient failure that mentions a mismatch retries
    assert cell_view(cell(S.RETRYING, error=bad, error_kind="transient"), NOW)["word"] == "retrying"


def test_prometheus_text_escapes_labels_and_lists_every_bucket() -> None:
    totals = MetricsTotals(
        instructions={s.value: 0 for s in S},
        jobs={"active": 0, "succeeded": 1, "failed": 0, "cancelled": 0},
        attempts=3,
        bytes_sent=700,
        events={"failure": 1},
        transfer_bounds=(1.0, 10.0),
        transfer_buckets=(1, 2),
        transfer_count=2,
        transfer_sum=5.5,
    )
    servers = [
        ServerRecord('we"ird\\', "http://x", (), 0.0, NOW - 1, 10),
        ServerRecord("gone", "http://y", (), 0.0, NOW - 60, None),
    ]
    text = metrics.render(totals, servers, NOW)
    lines = text.splitlines()
    assert 'packdist_transfer_seconds_bucket{le="1.0"} 1' in lines
    assert 'packdist_transfer_seconds_bucket{le="+Inf"} 2' in lines
    assert "packdist_transfer_seconds_sum 5.5" in lines
    assert "packdist_retries_scheduled_total 1" in lines
    assert "packdist_servers_online 1" in lines
    assert 'packdist_server_up{server="we\\"ird\\\\"} 1' in lines
    assert 'packdist_server_up{server="gone"} 0' in lines
    assert not any(
        line.startswith('packdist_server_disk_free_bytes{server="gone"') for line in lines
    )
    assert "# TYPE packdist_transfer_seconds histogram" in lines


def _job(sent: int, state: S = S.SENDING) -> JobRecord:
    i = InstructionRecord(
        1, "j", "dp1", state, 1, None, 0.0, sent, 1000, 0.0, None, bytes_done=sent
    )
    return JobRecord("j", "p", "app@1.0", 0.0, None, None, {}, (i,))


def test_rate_needs_a_second_of_samples_and_forgets_old_ones() -> None:
    meter = RateMeter(window=4.0)
    meter.add(_job(0), 0.0)
    assert meter.rate("dp1") is None
    meter.add(_job(100), 0.5)
    assert meter.rate("dp1") is None  # too short a span to say
    meter.add(_job(200), 2.0)
    assert meter.rate("dp1") == 100.0
    for t in range(3, 12):  # stalled for 9 s: the old burst leaves the window
        meter.add(_job(200), float(t))
    assert meter.rate("dp1") == 0.0
    meter.add(_job(1000, S.INSTALLED), 12.0)  # installed counts as all bytes delivered
    assert meter.rate("dp1") is not None and meter.rate("dp1") > 0  # type: ignore[operator]
    assert meter.rate("nobody") is None


def test_job_table_fits_80_columns_and_keeps_the_whole_error() -> None:
    from rich.console import Console

    from packdist.cli.job_view import _job_table

    error = "connection refused by http://127.0.0.1:18702"
    ins = (
        InstructionRecord(
            1,
            "j",
            "dp1",
            S.SENDING,
            1,
            None,
            0.0,
            2_400_000,
            3_000_000,
            0.0,
            None,
            bytes_done=2_400_000,
        ),
        InstructionRecord(2, "j", "dp2", S.RETRYING, 4, error, NOW + 25, 0, 3_000_000, 0.0, None),
    )
    job = JobRecord("48f03d2b1b20", "p", "app@1.0", 0.0, None, None, {}, ins)
    meter = RateMeter()
    meter.add(job, 0.0)
    meter.add(job, 2.0)
    console = Console(width=80, record=True, color_system=None)
    console.print(_job_table(job, NOW, meter))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text, text
    assert error in text
    assert "80%" in text and "2.3/2.9 MiB" in text and "in 25s" in text
    assert "total" in text and "40%" in text
