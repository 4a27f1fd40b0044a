"""An agent its site refuses backs off to a minute and says why once per cause."""

from __future__ import annotations

import logging

import pytest

from packdist.agent.refused import Refused
from packdist.retry import RetryPolicy


def test_a_refused_agent_waits_longer_each_time_up_to_a_minute_and_says_why_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = Refused(RetryPolicy(initial=2.0, factor=2.0, cap=60.0, jitter=0.0))
    with caplog.at_level(logging.INFO, logger="packdist.agent"):
        waits = [refused.again("unknown or revoked enrollment token", "dp1") for _ in range(8)]
        assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1
        assert said[0].startswith("the site refuses this agent: unknown or revoked")
        assert "'packdist server token dp1'" in said[0]
        refused.again("another cause", "dp1")  # a new cause: said
        refused.accepted()  # accepted: the next refusal starts again at 2 s, and is said
        assert refused.again("unknown or revoked enrollment token", "dp1") == 2.0
    assert len(caplog.records) == 4  # three refusals said, one "accepts this agent again"
