"""How the despooler's slots are shared out, so that no one kind of slow target holds them
all: servers not heard from lately (unplugged, hung) have a quarter, each child site a
quarter and all child sites together half. A child's attempts all wait on one transfer
across its link, so a slow link with many servers behind it would otherwise hold every slot
while this site's own servers and the other children wait.

:class:`SlotShares` keeps what each share holds now and claims due work within them; the
despooler runs the attempts.
"""

from __future__ import annotations

from collections.abc import Callable

from packdist.sender import behind_child
from packdist.service import Service
from packdist.store.records import OWN_SERVERS, Claim

CLAIM_BATCH = 64  # instructions claimed in one transaction (one lease name for the batch)


class SlotShares:
    def __init__(self, slots: int, silent_after: Callable[[], float]) -> None:
        self.slots, self.silent_after = slots, silent_after
        self.silent_cap = max(1, slots // 4)
        self.child_cap = max(1, slots // 4)  # at most; less when there are many children
        self.silent: set[int] = set()  # instructions under way to servers not heard from
        self.by_child: dict[str, set[int]] = {}  # under way behind each child site
        self.held_back = False  # due work we may not take now waits for a free slot
        self._turn = 0

    def claim(
        self, service: Service, lease: str, lease_seconds: float, free: int, now: float
    ) -> list[tuple[Claim, bool]]:
        """Up to ``free`` (at most a batch) due instructions: this site's own servers first,
        then each child site's within its share, a different child first each time. Each
        comes with whether its server counts as silent (decided here, once)."""
        self.held_back = False
        free = min(CLAIM_BATCH, free)
        after = self.silent_after()
        own = self._claim_own(service, lease, lease_seconds, free, now, after)
        claims = [(c, silent(c, now, after)) for c in own]
        if len(claims) < free:
            children = self._claim_children(service, lease, lease_seconds, free - len(claims), now)
            claims += [(c, False) for c in children]
        return claims

    def started(self, c: Claim, is_silent: bool) -> None:
        if is_silent:
            self.silent.add(c.instruction_id)
        found = behind_child(c.server)
        if found is not None:
            self.by_child.setdefault(found[0], set()).add(c.instruction_id)

    def ended(self, c: Claim) -> None:
        self.silent.discard(c.instruction_id)
        found = behind_child(c.server)
        if found is not None:
            self.by_child.get(found[0], set()).discard(c.instruction_id)

    def _claim_own(
        self,
        service: Service,
        lease: str,
        lease_seconds: float,
        free: int,
        now: float,
        after: float,
    ) -> list[Claim]:
        """This site's own servers: first up to the room left for servers not heard from
        lately, then, for the rest, only servers that were."""
        silent_room = max(0, self.silent_cap - len(self.silent))
        first = min(free, silent_room)
        claims = (
            service.claim_ready(lease, lease_seconds, first, now, None, OWN_SERVERS)
            if first
            else []
        )
        quiet = sum(1 for c in claims if silent(c, now, after))
        # the rest, of servers heard from lately (unless the first took fewer than it might:
        # then nothing else is due)
        if free > len(claims) and (first == 0 or len(claims) == first):
            claims += service.claim_ready(
                lease, lease_seconds, free - len(claims), now, now - after, OWN_SERVERS
            )
        self.held_back = len(claims) < free and quiet >= silent_room
        return claims

    def _claim_children(
        self, service: Service, lease: str, lease_seconds: float, free: int, now: float
    ) -> list[Claim]:
        """The servers behind child sites, each child within its share (heard from or not:
        its attempts all wait on its one link)."""
        names = service.store.child_site_names()
        if not names:
            return []
        cap = max(1, min(self.child_cap, self.slots // 2 // len(names)))
        self._turn = (self._turn + 1) % len(names)
        claims: list[Claim] = []
        for child in names[self._turn :] + names[: self._turn]:
            room = cap - len(self.by_child.get(child, ()))
            if room <= 0:  # its due work, if any, waits for one of its own to end
                self.held_back = True
                continue
            taken = service.claim_ready(lease, lease_seconds, min(room, free), now, None, child)
            claims += taken
            free -= len(taken)
            if len(taken) == room or free == 0:
                self.held_back = True  # more may be due, for this child or the next
            if free == 0:
                break
        return claims


def silent(c: Claim, now: float, after: float) -> bool:
    """Whether the claim's server has not been heard from lately (likely unreachable)."""
    return c.server_last_seen is None or c.server_last_seen < now - after
