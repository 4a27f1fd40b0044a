"""Fixtures for the integration tier: real site and agent processes over HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import harness as h


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., h.Cluster]]:
    """``cluster("dp1", "dp2")``: a running site plus one running agent per name.

    ``throttle={"dp1": bytes_per_second}`` puts a rate-limited proxy between dp1 and the site.

    Everything is stopped afterwards; when the test failed, the tail of every log is printed.
    """
    made: list[h.Cluster] = []

    def make(*servers: str, throttle: dict[str, float] | None = None) -> h.Cluster:
        c = h.start_cluster(tmp_path / f"cluster{len(made)}", servers, throttle)
        made.append(c)
        return c

    yield make
    rep = getattr(request.node, "rep_call", None)
    for c in made:
        if rep is not None and rep.failed:
            print(c.dump_logs(60))
        c.close()
