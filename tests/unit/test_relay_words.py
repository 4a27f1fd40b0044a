"""What a child site tells its parent about the work the parent sent: the parent's
``job show`` prints these words, so they must say where the package is."""

from __future__ import annotations

from typing import Any

from packdist.errors import TransferError
from packdist.site.package_pull import Pull
from packdist.site.parent_link import Joined
from packdist.site.relay import _installing, _pulling

JOINED = Joined("hq", "br", "ab" * 32, ())
PKG = "cd" * 32


def _row(state: str, **over: Any) -> dict[str, Any]:
    row = {
        "state": state,
        "attempts": 1,
        "last_error": None,
        "error_kind": None,
        "bytes_sent": 0,
        "bytes_total": 1000,
        "bytes_done": 420,
        "phase": None,
        "cancel_cause": None,
    }
    row.update(over)
    return row


def test_a_package_on_its_way_to_the_child_says_how_far_it_has_come() -> None:
    pull = Pull(PKG, "app@1.0", "dp1", total=2000, received=500, wire=260)
    status = _pulling(pull, "dp1", JOINED)
    assert (status.state, status.phase) == ("installing", "at br: receiving from hq, 25%")
    assert status.bytes_wire == 260  # what crossed the parent's link: counted once, here
    assert _pulling(pull, "dp2", JOINED).bytes_wire == 0  # not again for another server


def test_a_pull_that_failed_is_a_failed_attempt_with_its_cause() -> None:
    pull = Pull(PKG, "app@1.0", "dp1", error=TransferError("connection reset by hq"))
    status = _pulling(pull, "dp1", JOINED)
    assert (status.state, status.error, status.error_kind) == (
        "failed",
        "at br: connection reset by hq",
        "transient",
    )


def test_the_childs_own_attempt_says_which_server_it_sends_to() -> None:
    status = _installing(PKG, _row("sending"), "dp2", JOINED, None)
    assert (status.state, status.phase) == ("installing", "at br: sending to dp2, 42%")
    waiting = _installing(PKG, _row("pending"), "dp2", JOINED, None)
    assert waiting.phase == "at br: waiting for a worker to send to dp2"


def test_a_grandchilds_words_come_up_under_the_child() -> None:
    row = _row("sending", phase="at gc: receiving from br, 10%")
    status = _installing(PKG, row, "gc/dp9", JOINED, None)
    assert status.phase == "at br: at gc: receiving from br, 10%"


def test_a_retry_at_the_child_is_a_failed_attempt_at_the_parent_naming_both() -> None:
    row = _row("retrying", last_error="connection refused by https://dp1:8700")
    status = _installing(PKG, row, "dp1", JOINED, None)
    assert status.state == "failed"
    assert status.error == "at br: connection refused by https://dp1:8700; br retries it"
    assert status.error_kind == "transient"


def test_only_the_childs_verified_install_reads_as_installed() -> None:
    assert _installing(PKG, _row("installed"), "dp1", JOINED, None).state == "installed"
    for state in ("pending", "sending", "retrying", "failed", "cancelled"):
        assert _installing(PKG, _row(state), "dp1", JOINED, None).state != "installed"


def test_a_cancel_at_the_child_reaches_the_parent_with_what_cancelled_it() -> None:
    row = _row("cancelled", last_error="connect timeout", cancel_cause="cancelled by operator ann")
    status = _installing(PKG, row, "dp1", JOINED, None)
    assert status.state == "cancelled"
    assert status.error is not None and status.error.endswith(": cancelled by operator ann")
    assert "connect timeout" not in status.error
