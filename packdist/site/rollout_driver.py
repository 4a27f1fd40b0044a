"""The serve loop's part in rollouts: about once a second, judge running waves and start
the next ones (:meth:`packdist.service.rollouts.RolloutUseCases.advance_rollouts`).

One read of the unfinished rollouts per pass (none: nothing more), so an idle site pays one
small query a second. Every site worker runs it; the store's guarded updates make one of
them win each change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from packdist.service import Service
from packdist.site.validation import StoreCall

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between passes: a wave starts within this of the last one's end


async def rollout_loop(db: StoreCall, jobs_created: Callable[[], None]) -> None:
    """Advance rollouts until cancelled; errors are logged, never fatal. ``jobs_created``
    is called when a pass started a wave (its job's instructions are due now)."""
    failing = False
    while True:
        try:
            changes = await db(lambda s: Service(s).advance_rollouts(time.time()))
            if changes:
                jobs_created()
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception:
            if not failing:  # once per run of failures, not once a second
                log.exception("advancing rollouts failed; trying again every %.0fs", INTERVAL)
            failing = True
        await asyncio.sleep(INTERVAL)
