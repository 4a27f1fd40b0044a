"""The tracker: which peers an agent may fetch a package's chunks from.

When the despooler sends "install package P" to server S, it asks the tracker for S's
peers: the servers that hold P (holders) and the ones receiving P at the same time (the
swarm), both restricted to

* servers heard from recently (a silent one would only cost a connect timeout), and
* servers with S's location label (``peers.location_label``, default ``site``): a branch
  office pulls one copy over its uplink and shares it inside.

Each peer comes with a credential signed by the site for S to fetch chunks of P from that
peer (:func:`packdist.auth.peer_assertion`). Agents split the work between themselves (see
:mod:`packdist.agent.sources`); the tracker only says who is in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from packdist.auth import peer_assertion
from packdist.core.signing import SigningKey
from packdist.store.base import SwarmMember

#: a server silent for longer than this is not offered as a peer
ALIVE_WITHIN = 10.0
#: holders offered to one agent (all of them hold every chunk; a few spread the load)
MAX_HOLDERS = 8
#: receivers offered to one agent; every receiver in the location should see the same set,
#: so this is a safety cap, not a tuning knob
MAX_SWARM = 64
DEFAULT_LOCATION_LABEL = "site"


@dataclass(frozen=True)
class PeerOffer:
    name: str
    url: str
    token: str
    holder: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "token": self.token, "holder": self.holder}


def choose_peers(
    members: list[SwarmMember],
    server: str,
    package_id: str,
    key: SigningKey,
    now: float,
    location_label: str = DEFAULT_LOCATION_LABEL,
    alive_within: float = ALIVE_WITHIN,
) -> list[PeerOffer]:
    """The peers ``server`` may use for ``package_id``, each with its credential (peers
    heard from within ``alive_within`` seconds: the site's silence that means offline)."""
    me = next((m for m in members if m.server == server), None)
    here = dict(me.labels).get(location_label) if me is not None else None
    usable = [
        m
        for m in members
        if m.server != server
        and m.last_seen is not None
        and now - m.last_seen <= alive_within
        and dict(m.labels).get(location_label) == here
    ]
    holders = [m for m in usable if m.holder]
    swarm = [m for m in usable if not m.holder][:MAX_SWARM]
    if len(holders) > MAX_HOLDERS:  # a different few for each server: load spreads
        holders = random.Random(f"{server}/{package_id}").sample(holders, MAX_HOLDERS)
    return [
        PeerOffer(m.server, m.url, peer_assertion(key, m.server, server, package_id, now), m.holder)
        for m in sorted(holders + swarm, key=lambda m: m.server)
    ]
