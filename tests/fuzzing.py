"""How long the fuzz tests run, and what they tried.

``make test`` runs each fuzz surface with a modest number of examples (well under a minute
per file); ``PACKDIST_FUZZ_EXAMPLES=N`` runs every surface with ``N`` examples instead, for a
long run. Each surface counts the examples it really tried (:func:`tried`); the counts are
printed at the end of the run ("fuzz examples tried"), for the closing note of a change.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

ENV = "PACKDIST_FUZZ_EXAMPLES"

TRIED: Counter[str] = Counter()


def examples(default: int) -> int:
    """``default``, or ``PACKDIST_FUZZ_EXAMPLES`` when it is set."""
    raw = os.environ.get(ENV, "").strip()
    return int(raw) if raw else default


def fuzz(default: int) -> settings:
    """Settings for one fuzz surface: ``default`` examples (see :func:`examples`), no
    per-example deadline (real processes answer at their own pace), no example database."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def tried(surface: str) -> None:
    TRIED[surface] += 1
