"""The agent refused by its site: a wrong or revoked token backs off (to a minute, by
:class:`packdist.retry.RetryPolicy`) and is said in the log once per cause, not every
2 s; a home enrolled as one server refuses another server's token."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from packdist.errors import AuthError
from packdist.retry import RetryPolicy

log = logging.getLogger("packdist.agent")

#: after a refusal: 2 s, 4 s, ... up to a minute (a token mended at the site is taken then)
REFUSED_BACKOFF = RetryPolicy(initial=2.0, factor=2.0, cap=60.0, jitter=0.2)


class HomeOfAnotherServer(AuthError):
    """This agent's home is enrolled as another server than the token's."""


def check_same_server(home: Path, enrolled_as: str | None, answer: dict[str, Any]) -> None:
    """HomeOfAnotherServer when the site says the token is another server's than the one
    this home was enrolled as (its packages, its certificate are that server's)."""
    named = answer.get("server")
    if enrolled_as is not None and named != enrolled_as:
        raise HomeOfAnotherServer(
            f"this agent's home ({home}) is enrolled as {enrolled_as}, but the token is"
            f" {named}'s: give {enrolled_as}'s token, or start {named}'s agent with a home of"
            " its own (--home)"
        )


class Refused:
    """How long to wait after the site refused this agent, and what was said of it."""

    def __init__(self, policy: RetryPolicy = REFUSED_BACKOFF) -> None:
        self.policy = policy
        self.times = 0  # refusals in a row
        self._said: str | None = None  # the cause said last (None: none since accepted)

    def again(self, why: str, server: str | None) -> float:
        """The site refused us again for ``why``: the seconds to wait; the cause logged
        when it is new."""
        self.times += 1
        if why != self._said:
            self._said = why
            name = server or "NAME"
            log.error(
                "the site refuses this agent: %s; an operator gives it a new token with"
                " 'packdist server token %s' at the site; trying again, less and less often"
                " (every %gs at most)",
                why,
                name,
                self.policy.cap,
            )
        return self.policy.delay(self.times)

    def accepted(self) -> None:
        """The site took a request of ours: the next refusal is said again."""
        if self._said is not None:
            log.info("the site accepts this agent again")
        self.times, self._said = 0, None
