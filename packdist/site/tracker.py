"""The tracker: which peers an agent may fetch a package's chunks from.

When the despooler sends "install package P" to server S, it asks the tracker for S's
peers: the servers that hold P (holders) and the ones receiving P at the same time (the
swarm), both restricted to

* servers heard from recently (a silent one would only cost a connect timeout), and
* servers with S's location label (``peers.location_label``, default ``site``): a branch
  office pulls one copy over its uplink and shares it inside.

With them comes one credential signed by the site for S to fetch chunks of P from any of
them (:func:`packdist.auth.peer_assertion`). Agents split the work between themselves (see
:mod:`packdist.agent.sources`); the tracker only says who is in.

The members of each package's swarm are read from the store at most once per
``REFRESH`` seconds and held by location (:class:`SwarmIndex`), so choosing the peers of one
install costs the same with 10 servers as with 10,000: a sample of the holders, the first
receivers by name, one signature.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packdist.auth import peer_assertion
from packdist.core.signing import SigningKey
from packdist.site.cadence import SILENT_AFTER
from packdist.store.base import SwarmMember

#: a server silent for longer than this is not offered as a peer (the one floor of silence)
ALIVE_WITHIN = SILENT_AFTER
#: seconds a package's swarm, as read from the store, serves the installs that follow
REFRESH = 2.0
#: a server the swarm does not know (a new job's, a retry come due) calls for a new read,
#: but not more often than this: meanwhile it fetches from the site alone
REREAD_AFTER = 0.5
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
    """The peers ``server`` may use for ``package_id``, with the credential for them (peers
    heard from within ``alive_within`` seconds: the site's silence that means offline)."""
    swarm = Swarm(members, now, location_label, alive_within)
    return swarm.offers(server, package_id, key, now)


class Swarm:
    """One package's holders and receivers heard from lately, by location, as read at one
    moment: ``offers`` costs nothing proportional to the fleet."""

    def __init__(
        self,
        members: list[SwarmMember],
        now: float,
        location_label: str = DEFAULT_LOCATION_LABEL,
        alive_within: float = ALIVE_WITHIN,
        heard: Callable[[str], float | None] = lambda server: None,
    ) -> None:
        self.read_at = now
        self.alive_within = alive_within
        self.heard = heard  # the site's own, fresher word on when a server was last heard
        self.location: dict[str, str | None] = {}  # every member -> its location
        self.holders: dict[str | None, list[SwarmMember]] = {}
        self.receivers: dict[str | None, list[SwarmMember]] = {}
        self._members: dict[str, SwarmMember] = {}
        self._now_holding: set[str] = set()  # receivers that have installed since the read
        self._entries: dict[tuple[str, bool], dict[str, Any]] = {}  # as requests carry them
        for m in sorted(members, key=lambda m: m.server):
            here = dict(m.labels).get(location_label)
            self.location[m.server] = here
            self._members[m.server] = m
            (self.holders if m.holder else self.receivers).setdefault(here, []).append(m)

    def _alive(self, m: SwarmMember, now: float) -> bool:
        """Heard from lately, by the store's word at the read or the site's since: judged
        when offered, so a server back since the read is offered at once."""
        seen = max(m.last_seen or 0.0, self.heard(m.server) or 0.0)
        return seen > 0 and now - seen <= self.alive_within

    def knows(self, server: str) -> bool:
        """Whether ``server`` was a member when this was read (a new receiver, one of a job
        created since, calls for a new read)."""
        return server in self.location

    def installed(self, server: str) -> None:
        """``server`` holds the package now: offered as a holder from here on."""
        m = self._members.get(server)
        if m is None or m.holder or server in self._now_holding:
            return
        self._now_holding.add(server)
        here = self.location[server]
        self.holders.setdefault(here, []).append(
            SwarmMember(m.server, m.url, m.labels, m.last_seen, True)
        )

    def offers(self, server: str, package_id: str, key: SigningKey, now: float) -> list[PeerOffer]:
        token, entries = self.offer_json(server, package_id, key, now)
        return [PeerOffer(e["name"], e["url"], token, e["holder"]) for e in entries]

    def offer_json(
        self, server: str, package_id: str, key: SigningKey, now: float
    ) -> tuple[str, list[dict[str, Any]]]:
        """The credential and the peers of :meth:`offers`, as an install request carries
        them (``peer_token``, ``peers``): the entries are built once per read."""
        if server not in self.location:  # not a member when read: its place is unknown
            return "", []
        here = self.location[server]
        holders = self.holders.get(here, [])
        if len(holders) > 2 * MAX_HOLDERS:  # a different few for each server: load spreads
            # (twice as many as needed, for the asker and the silent among them: no scan)
            holders = random.Random(f"{server}/{package_id}").sample(holders, 2 * MAX_HOLDERS)
        chosen = [m for m in holders if m.server != server and self._alive(m, now)]
        del chosen[MAX_HOLDERS:]
        taken = 0  # every receiver here sees the same first ones, by name
        # looked at: at most 4x what is offered, however many are silent or holding by now
        for m in self.receivers.get(here, ())[: 4 * MAX_SWARM]:
            if taken == MAX_SWARM:
                break
            if m.server != server and m.server not in self._now_holding and self._alive(m, now):
                chosen.append(m)
                taken += 1
        if not chosen:
            return "", []
        chosen.sort(key=lambda m: m.server)
        return peer_assertion(key, server, package_id, now), [self._entry(m) for m in chosen]

    def _entry(self, m: SwarmMember) -> dict[str, Any]:
        entry = self._entries.get((m.server, m.holder))
        if entry is None:
            entry = self._entries[m.server, m.holder] = {
                "name": m.server,
                "url": m.url,
                "holder": m.holder,
            }
        return entry


class SwarmIndex:
    """The swarms of the packages being distributed, each read again once ``REFRESH``
    seconds old (a holder that appeared meanwhile is offered from the next read)."""

    def __init__(
        self,
        location_label: str = DEFAULT_LOCATION_LABEL,
        refresh: float = REFRESH,
        heard: Callable[[str], float | None] = lambda server: None,
    ):
        self.location_label = location_label
        self.refresh = refresh
        self.heard = heard
        self._swarms: dict[str, Swarm] = {}

    def fresh(self, package_id: str, server: str, now: float) -> Swarm | None:
        """The package's swarm as read lately, if it is recent and knows ``server`` (or was
        read again less than ``REREAD_AFTER`` ago: its offers to a server it does not know
        are none)."""
        swarm = self._swarms.get(package_id)
        if swarm is None or not (0 <= now - swarm.read_at < self.refresh):
            return None
        if swarm.knows(server) or now - swarm.read_at < REREAD_AFTER:
            return swarm
        return None

    def installed(self, package_id: str, server: str) -> None:
        """``server`` installed the package: it is a holder in the swarm held."""
        swarm = self._swarms.get(package_id)
        if swarm is not None:
            swarm.installed(server)

    def load(
        self,
        package_id: str,
        members: list[SwarmMember],
        now: float,
        alive_within: float = ALIVE_WITHIN,
    ) -> Swarm:
        if len(self._swarms) > 64:  # packages no longer being distributed drop out
            self._swarms = {p: s for p, s in self._swarms.items() if now - s.read_at < 60}
        swarm = Swarm(members, now, self.location_label, alive_within, self.heard)
        self._swarms[package_id] = swarm
        return swarm
