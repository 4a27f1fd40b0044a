"""The lab tier: network namespaces, cables pulled. Needs root and iproute2; skipped
otherwise, and failed under ``CI=true`` (see :func:`tests.conftest.require`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import have_root_and_netns, require
from tests.lab.netns import Lab, netns_supported

LAB_DIR = Path(__file__).parent
_why_not: str | None = None
_checked = False


def _lab_unavailable() -> str | None:
    """Why the lab cannot run here (checked once per session), or None."""
    global _why_not, _checked
    if not _checked:
        _checked = True
        _why_not = have_root_and_netns()
        if _why_not is None:
            _why_not = netns_supported()
    return _why_not


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_DIR in item.path.parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _require_lab() -> None:
    require("lab", _lab_unavailable())


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh lab (site, dp1, dp2 in their namespaces); always torn down."""
    with Lab() as the_lab:
        yield the_lab
