"""How often an agent heartbeats: the bounds of the interval the site names, and
:class:`HeartbeatPace`, what the agent makes of the site's answers, its sheds (503 with
``Retry-After``) and heartbeats that fail; and what else a heartbeat (or hello) answer
carries for the agent: the removed servers, the keys of the sites above. Both sides read
it; it needs no HTTP client (the CLI's views import it, and start fast).
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from packdist.errors import PackdistError

log = logging.getLogger("packdist.agent")

#: seconds between two heartbeats when the site does not say (a site older than ``interval``)
DEFAULT_INTERVAL = 2.0
MIN_INTERVAL = 1.0  # an interval the site names is taken within these bounds
#: 10 s: an agent that noticed its outage (its heartbeats failed) is heard from within
#: seconds of its return whatever its interval (RETRY_FIRST below); one that did not notice
#: (the outage fell between two heartbeats, and only the site's call to it failed) is found
#: by its next heartbeat, within this, or by the despooler's own retry, whichever comes first
MAX_INTERVAL = 10.0
#: after a failed heartbeat, the next comes this soon (doubling while failures go on, up to
#: RETRY_MAX, each jittered down to half): a server whose cable was pulled is heard from
#: within seconds of its return, whatever its interval
RETRY_FIRST = 1.0
RETRY_MAX = 4.0
#: a shed heartbeat waits the site's Retry-After, doubling while sheds go on, at most
#: SHED_MAX, plus up to half again as jitter: back to normal within a minute of the load
#: dropping
SHED_MAX = 30.0


class HeartbeatPace:
    """How long an agent waits before its next heartbeat, from what the last one met."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.interval = DEFAULT_INTERVAL
        self.failures = 0  # heartbeats in a row that did not reach the site
        self.sheds = 0  # heartbeats in a row the site shed
        self._rng = rng or random.Random()

    def answered(self, answer: dict[str, Any]) -> float:
        """The site took the heartbeat (or hello): its ``interval``, within bounds."""
        self.failures = self.sheds = 0
        said = answer.get("interval")
        if isinstance(said, int | float) and not isinstance(said, bool) and math.isfinite(said):
            self.interval = min(MAX_INTERVAL, max(MIN_INTERVAL, float(said)))
        else:
            self.interval = DEFAULT_INTERVAL
        return self.interval

    def shed(self, retry_after: float) -> float:
        """The site shed it, asking to wait ``retry_after`` seconds."""
        self.failures = 0
        self.sheds += 1
        wait = max(MIN_INTERVAL, retry_after) * 2 ** min(self.sheds - 1, 5)
        return float(min(SHED_MAX, wait) * self._rng.uniform(1.0, 1.5))

    def failed(self) -> float:
        """It did not reach the site (or the site failed): try again soon."""
        self.failures += 1
        wait = min(RETRY_MAX, RETRY_FIRST * 2 ** min(self.failures - 1, 5))
        return float(wait * self._rng.uniform(0.5, 1.0))


#: names of removed servers a heartbeat answer carries, at most (the newest removed first):
#: the answer every agent gets every few seconds stays small. Of more removals than this
#: within a peer credential's life (4 h), the oldest go unnamed: their credentials are then
#: refused only when they expire (a list fetched by version would lift this)
MAX_REVOKED = 1_000


def revoked_of(answer: dict[str, Any]) -> frozenset[str] | None:
    """The servers a heartbeat answer names as removed (None: it says nothing of them, an
    older site); peers refuse the peer credentials that name them."""
    said = answer.get("revoked", [])
    if not isinstance(said, list):
        return None
    return frozenset(n for n in said[:MAX_REVOKED] if isinstance(n, str))


#: keys of the sites above a site (parent, grandparent, ...) an answer may name, at most
MAX_TRUSTED_KEYS = 8


def trusted_keys_of(answer: dict[str, Any]) -> tuple[str, ...] | None:
    """The Ed25519 public keys (hex, lower case, in the site's order) of the sites above
    the one answering, whose manifests its agents accept too; None: the answer says nothing
    of them (an older site), or says it wrongly: then one warning line, and nothing changes
    (an answer from the site never stops the agent)."""
    said = answer.get("trusted_keys")
    if said is None:
        return None
    from packdist.core.signing import VerifyKey  # here: the CLI need not load cryptography

    try:
        if not isinstance(said, list) or len(said) > MAX_TRUSTED_KEYS:
            raise PackdistError(f"a list of at most {MAX_TRUSTED_KEYS} keys, not {said!r:.80}")
        keys = []
        for k in said:
            if not isinstance(k, str):
                raise PackdistError(f"not a key in hex: {k!r:.80}")
            keys.append(VerifyKey.from_hex(k).hex)
    except PackdistError as exc:
        log.warning("ignoring the site's trusted_keys: %s", exc.message)
        return None
    return tuple(dict.fromkeys(keys))  # each once, in order
