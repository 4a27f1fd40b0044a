"""Use cases of clients: machines that are not distribution servers and fetch packages into
a directory of their own (``packdist fetch``).

A client is registered with a token (only its hash is kept) and location labels. Asking for
a package's sources, it is offered the servers that hold it, nearest first
(:func:`order_sources`): those with the client's location label heard from lately, then
the site's other servers that hold it and were heard from lately; the site itself comes
after them (the client knows its URL). It falls back from one to the next at once
(Configuration Manager's boundary groups wait 120 minutes by default before they do).
Its report of a fetch in place becomes an event and the counts of ``/metrics``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from packdist.core.words import human_bytes
from packdist.errors import NotFound
from packdist.protocol.client_api import SITE, FetchReport, Source
from packdist.service.activation import ActivationUseCases
from packdist.store.clients import SITE_SOURCE, ClientRecord
from packdist.store.records import PackageRecord, SwarmMember

#: servers offered to a client: the nearest few (all hold every chunk)
MAX_OFFERED = 8


def order_sources(
    members: Sequence[SwarmMember],
    location: str | None,
    location_label: str,
    now: float,
    alive_within: float,
    heard: Callable[[str], float | None] = lambda server: None,
    seed: str = "",
) -> list[Source]:
    """The holders among ``members`` a client at ``location`` is offered, nearest first:
    those at its location, then the others; only servers heard from within
    ``alive_within`` seconds (by the store's word or the site's fresher ``heard``).
    Within each tier the order is shuffled by ``seed`` (the client's name), so clients
    spread over the holders while each asks them in the same order every time."""
    rng = random.Random(seed)
    near: list[Source] = []
    far: list[Source] = []
    for m in sorted(members, key=lambda m: m.server):
        seen = max(m.last_seen or 0.0, heard(m.server) or 0.0)
        if not m.holder or seen <= 0 or now - seen > alive_within:
            continue
        here = dict(m.labels).get(location_label)
        tier = near if location is not None and here == location else far
        tier.append(Source(m.server, m.url, here))
    rng.shuffle(near)
    rng.shuffle(far)
    return (near + far)[:MAX_OFFERED]


def report_words(client: str, ref: str, report: FetchReport) -> str:
    """``client c1 fetched app@2 (12.0 MB from dp1, 1.0 MB from site; 3.0 MB here)``."""
    parts = [
        f"{human_bytes(n)} from {name}"
        for name, n in sorted(report.by_source.items(), key=lambda kv: (-kv[1], kv[0]))
        if n > 0
    ]
    if report.local:
        parts.append(f"{human_bytes(report.local)} already here")
    return f"client {client} fetched {ref} ({', '.join(parts) or 'nothing to fetch'})"


class ClientUseCases(ActivationUseCases):
    def add_client(self, name: str, token_hash: str, labels: dict[str, str], now: float) -> None:
        store = self.store
        with store.transaction():
            store.add_client(name, token_hash, labels, now)
            where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
            message = f"client {name} added{f' ({where})' if where else ''}{self._by()}"
            store.add_event("client", message, now=now, actor=self.actor)

    def remove_client(self, name: str, now: float) -> None:
        store = self.store
        with store.transaction():
            store.remove_client(name)
            store.add_event(
                "client", f"client {name} removed{self._by()}", now=now, actor=self.actor
            )

    def client_asks(
        self, client: ClientRecord, name: str, version: str, now: float
    ) -> PackageRecord:
        """The package a client asks the sources of (NotFound if the site has none), its
        request counted."""
        store = self.store
        with store.transaction():
            package = store.find_package(name, version)
            if package is None:
                raise NotFound(f"no package {name}@{version} on this site")
            store.client_fetching(client.name, now)
            store.count_client(package.id, SITE_SOURCE, requests=1)
        return package

    def client_fetched(self, client: ClientRecord, report: FetchReport, now: float) -> str:
        """A client's fetch in place: counted, and an event; returns its words. Bytes are
        counted only for sources that are the site or one of its servers: a report naming
        others cannot grow the counts of ``/metrics`` without bound."""
        store = self.store
        with store.transaction():
            package = store.package_by_id(report.package_id)
            if package is None:
                raise NotFound(f"no package {report.package_id[:12]}… on this site")
            # at most the package's size from each (a report's numbers are the client's
            # word: an overflow, or a count inflated without bound, is not taken)
            known = {
                source: max(0, min(int(n), package.size))
                for source, n in report.by_source.items()
                if source == SITE or store.server_liveness(source) is not None
            }
            local = max(0, min(int(report.local), package.size))
            report = FetchReport(report.package_id, known, local, report.seconds)
            words = report_words(client.name, f"{package.name}@{package.version}", report)
            store.count_client(package.id, SITE_SOURCE, fetches=1)
            for source, n in known.items():
                if n > 0:
                    store.count_client(package.id, source, nbytes=n)
            store.add_event("client", words, now=now)
        return words
